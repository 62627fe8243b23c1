//! What to do about an error, in the words of this command line: the libraries say
//! what failed and why; which `minipod` command helps is the CLI's to say.

use minipod_runtime::netstack::NetworkError;
use minipod_runtime::state::StateError;
use minipod_runtime::{BundleError, ContainerError, ImageError, PodError};

/// The hint for the first error in `e`'s chain that has one.
pub fn for_error(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(p) = cause.downcast_ref::<PodError>() {
            pod(p)
        } else if let Some(c) = cause.downcast_ref::<ContainerError>() {
            container(c)
        } else if let Some(n) = cause.downcast_ref::<NetworkError>() {
            network(n)
        } else if let Some(i) = cause.downcast_ref::<ImageError>() {
            image(i)
        } else if let Some(b) = cause.downcast_ref::<BundleError>() {
            bundle(b)
        } else {
            cause.downcast_ref::<StateError>().and_then(state)
        }
    })
}

fn pod(e: &PodError) -> Option<String> {
    Some(match e {
        PodError::NoSuchPod(_) => "`minipod pod ls` lists the pods".into(),
        PodError::PodBusy { pod, .. } => format!("stop them first (`minipod pod stop {pod}`) or remove the pod with --force"),
        PodError::NoSuchContainer { .. } => "`minipod ctr ls` lists the containers".into(),
        PodError::ContainerRunning { pod, name } => format!("stop it first (`minipod ctr stop {pod} {name}`) or remove it with --force"),
        PodError::Container(c) => return container(c),
        PodError::Network(n) => return network(n),
        PodError::Image(i) => return image(i),
        _ => return None,
    })
}

fn container(e: &ContainerError) -> Option<String> {
    Some(match e {
        ContainerError::AlreadyExists { id, .. } => format!("pick another id, or remove it with `minipod delete {id}`"),
        ContainerError::NotFound { .. } => "`minipod list` shows the containers there".into(),
        ContainerError::StillRunning { id } => format!("stop it first (`minipod kill {id}`) or delete it with --force"),
        ContainerError::Bundle(b) => return bundle(b),
        ContainerError::State(s) => return state(s),
        _ => return None,
    })
}

fn network(e: &NetworkError) -> Option<String> {
    Some(match e {
        NetworkError::NoSuchNetwork(_) => "create it first (`minipod net create`); `minipod net ls` lists the networks".into(),
        NetworkError::LinkClash(_) => "`minipod net gc` removes what stale attachments left".into(),
        _ => return None,
    })
}

fn image(e: &ImageError) -> Option<String> {
    match e {
        ImageError::NotFound { .. } => Some("import it with `minipod image import PATH`, or pull it (`minipod image pull`)".into()),
        _ => None,
    }
}

fn bundle(e: &BundleError) -> Option<String> {
    match e {
        BundleError::Missing(_) => Some("pass --bundle with a directory that holds config.json and the rootfs".into()),
        BundleError::NoConfig(_) => Some("write one with `minipod spec` in that directory".into()),
        _ => None,
    }
}

fn state(e: &StateError) -> Option<String> {
    match e {
        StateError::Corrupt { .. } => Some("`minipod delete --force ID` removes the container".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_found_through_wrappers_and_context() {
        let e = anyhow::Error::from(PodError::Network(NetworkError::NoSuchNetwork("n".parse().unwrap()))).context("running pod web");
        assert!(for_error(&e).is_some_and(|h| h.contains("minipod net create")));
        let e = anyhow::Error::from(PodError::ContainerRunning { pod: "p".into(), name: "c".into() });
        assert_eq!(for_error(&e).as_deref(), Some("stop it first (`minipod ctr stop p c`) or remove it with --force"));
        assert!(for_error(&anyhow::anyhow!("other")).is_none());
    }
}
