//! Pulling an image from an OCI distribution registry into the store: manifest and
//! config first, then each layer blob the store lacks into a scratch file, then
//! [`ImageStore::add`] verifies and unpacks them as for an import.
//!
//! A registry may have mirrors ([`RegistryMirror`]): they are tried in order, then the
//! registry itself, as containerd does with `hosts.toml`. The image keeps the name
//! it was asked by; its content is verified against the digests whoever served it.

use std::io::Read;
use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::{Image, ImageError, ImageStore};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback ones always are.
    pub insecure_registries: Vec<String>,
    /// Mirrors to try before a registry.
    pub mirrors: Vec<RegistryMirror>,
    /// Credentials for the image's own registry (a kubelet passes those of the pod's
    /// image pull secret). Mirrors are asked anonymously: they must not see them.
    pub credentials: Credentials,
}

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// HTTP basic, or the token flow a registry's challenge asks for, with these.
    Basic { username: String, password: String },
    /// A registry token used as it is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    /// Never the secret itself: options are logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Basic credentials from `user:password` (the password may hold `:`), as a
    /// Docker config's `auth` decodes and as `--creds` takes them.
    pub fn from_pair(pair: &str) -> Option<Self> {
        let (username, password) = pair.split_once(':')?;
        Some(Credentials::Basic { username: username.into(), password: password.into() })
    }

    fn for_source(&self, source: &str, upstream: &str) -> RegistryAuth {
        match self {
            _ if source != upstream => RegistryAuth::Anonymous,
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
            Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// Mirrors of one registry, parsed from `HOST=MIRROR[,MIRROR...]`, e.g.
/// `docker.io=mirror.gcr.io` or `docker.io=127.0.0.1:5000,mirror.gcr.io`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    /// The registry as it appears in references (`docker.io` for short names).
    pub registry: String,
    /// `host[:port]` of each mirror, in the order they are tried.
    pub mirrors: Vec<String>,
}

impl std::str::FromStr for RegistryMirror {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "write HOST=MIRROR[,MIRROR...], e.g. docker.io=mirror.gcr.io";
        let (registry, mirrors) = s.split_once('=').ok_or_else(|| format!("{s:?} has no `=`: {usage}"))?;
        let host = |h: &str| !h.is_empty() && !h.contains(['/', ' ', '=', '@']);
        if !host(registry) {
            return Err(format!("{registry:?} is not a registry host[:port]: {usage}"));
        }
        // Host names are case-insensitive (and matched so in `sources`).
        let (registry, mirrors) = (registry.to_ascii_lowercase(), mirrors.to_ascii_lowercase());
        let registry = registry.as_str();
        let mirrors: Vec<String> = mirrors.split(',').map(|m| m.trim_start_matches("https://").to_string()).collect();
        if let Some(bad) = mirrors.iter().find(|m| !host(m)) {
            return Err(format!("mirror {bad:?} of {registry} is not a host[:port] (no scheme or path): {usage}"));
        }
        // Short references normalise to docker.io; accept the names people also use for it.
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => "docker.io",
            r => r,
        };
        Ok(RegistryMirror { registry: registry.to_string(), mirrors })
    }
}

impl PullOptions {
    /// Where to fetch `registry`'s content from, in order: its mirrors, then itself.
    fn sources<'a>(&'a self, registry: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let mirrors = self
            .mirrors
            .iter()
            .filter(move |m| m.registry.eq_ignore_ascii_case(registry))
            .flat_map(|m| m.mirrors.iter().map(String::as_str));
        mirrors.chain(std::iter::once(registry))
    }
}

/// One source's error as it is; several as a list.
fn one_or_all(mut failures: Vec<String>) -> String {
    if failures.len() == 1 {
        failures.remove(0)
    } else {
        format!("no source had it: {}", failures.join("; "))
    }
}

/// `r` as served by `source`: same repository, tag and digest.
fn at_source(r: &Reference, source: &str) -> Reference {
    let (repo, source) = (r.repository().to_string(), source.to_string());
    match (r.tag(), r.digest()) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(source, repo, tag.to_string(), digest.to_string()),
        (None, Some(digest)) => Reference::with_digest(source, repo, digest.to_string()),
        (tag, None) => Reference::with_tag(source, repo, tag.unwrap_or("latest").to_string()),
    }
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The sources one pull has asked, and what each first answered. A source is asked
/// once (its `/v2/`, and the token flow if it challenges): one that did not answer is
/// not asked again in this pull. oci-client would otherwise repeat a failed preflight
/// before every request, so a source that never completes a connect would cost two
/// connect timeouts per request instead of one per pull.
#[derive(Default)]
struct Reached(std::collections::HashMap<String, Result<(), String>>);

impl Reached {
    async fn ask(&mut self, client: &Client, at: &Reference, auth: &RegistryAuth) -> Result<(), String> {
        if let Some(answer) = self.0.get(at.registry()) {
            return answer.clone();
        }
        let answer = client.auth(at, auth, RegistryOperation::Pull).await.map(drop).map_err(|e| match e {
            OciDistributionError::AuthenticationFailure(body) => refused(auth, &body),
            e => e.to_string(),
        });
        self.0.insert(at.registry().to_string(), answer.clone());
        answer
    }
}

/// What a token service's refusal says: whose pull it refused, what to check, and the
/// start of its answer (which may be a whole HTML page, or nothing).
fn refused(auth: &RegistryAuth, body: &str) -> String {
    let whose = match auth {
        RegistryAuth::Anonymous => "an anonymous pull (give credentials: crictl pull --creds, or the PullImage request's auth)",
        _ => "the credentials given (check them, and that they may pull this repository)",
    };
    let body = body.trim();
    let said = match body.char_indices().nth(200) {
        _ if body.is_empty() => "no reason given".to_string(),
        Some((end, _)) => format!("it said {:?}...", &body[..end]),
        None => format!("it said {body:?}"),
    };
    format!("the registry's token service refused {whose}: {said}")
}

/// Pulls `reference` into `store`; `progress` hears one line per step.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Image, ImageError> {
    let parsed = super::Reference::parse(reference)?;
    let normalized = parsed.to_string();
    let fail = |why: String| ImageError::Pull { reference: normalized.clone(), why };
    let r: &Reference = parsed.oci();
    // reqwest needs a process-wide TLS provider; a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut plain: Vec<String> = opts.insecure_registries.clone();
    plain.extend(opts.sources(r.registry()).filter(|s| is_loopback(s)).map(str::to_string));
    let client = Client::try_from(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain),
        // A mirror that drops packets must not hold the pull until TCP gives up: the
        // next source is tried instead.
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    })
    .map_err(|e| fail(format!("setting up the registry client: {e}")))?;
    let upstream = r.registry().to_string();
    let mut sources: Vec<Reference> = opts.sources(r.registry()).map(|s| at_source(r, s)).collect();
    let mut reached = Reached::default();
    let mut failures = Vec::new();
    let mut found = None;
    for (i, at) in sources.iter().enumerate() {
        let auth = opts.credentials.for_source(at.registry(), &upstream);
        let got = match reached.ask(&client, at, &auth).await {
            Ok(()) => client.pull_manifest_and_config(at, &auth).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match got {
            Ok(got) => {
                found = Some((i, got));
                break;
            }
            Err(e) => failures.push(format!("{}: {e}", at.registry())),
        }
    }
    let Some((i, (manifest, digest, config))) = found else {
        return Err(fail(one_or_all(failures)));
    };
    // Blobs from the source that served the manifest first, then from the others: a
    // pull-through cache may have the manifest and not yet a blob.
    sources[..=i].rotate_right(1);
    let from = if sources[0].registry() == upstream { String::new() } else { format!(" from mirror {}", sources[0].registry()) };
    progress(format!("{normalized}: manifest {digest}{from}, {} layer(s)", manifest.layers.len()));
    // Not under the store's tmp/, which an import clears of what crashed imports left.
    let scratch = store.dir().join("pulls").join(format!("{}-{}", std::process::id(), digest.trim_start_matches("sha256:")));
    std::fs::create_dir_all(&scratch).map_err(|source| ImageError::Io { what: "creating".into(), path: scratch.clone(), source })?;
    let result = async {
        for layer in &manifest.layers {
            let hex = layer.digest.rsplit(':').next().unwrap_or_default().to_string();
            if store.has_layer(&hex) {
                progress(format!("{}: already unpacked", layer.digest));
                continue;
            }
            let path = scratch.join(&hex);
            let mut failures = Vec::new();
            for at in &sources {
                // A source other than the manifest's has not been asked yet.
                if let Err(e) = reached.ask(&client, at, &opts.credentials.for_source(at.registry(), &upstream)).await {
                    failures.push(format!("{}: {e}", at.registry()));
                    continue;
                }
                let file = tokio::fs::File::create(&path).await.map_err(|source| ImageError::Io {
                    what: "creating".into(),
                    path: path.clone(),
                    source,
                })?;
                match client.pull_blob(at, layer, file).await {
                    Ok(()) => {
                        failures.clear();
                        break;
                    }
                    Err(e) => failures.push(format!("{}: {e}", at.registry())),
                }
            }
            if !failures.is_empty() {
                return Err(fail(format!("layer {}: {}", layer.digest, one_or_all(failures))));
            }
            progress(format!("{}: {} bytes", layer.digest, layer.size));
        }
        let json = serde_json::to_vec(&manifest).map_err(|e| fail(e.to_string()))?;
        let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&json).map_err(|e| fail(format!("the manifest: {e}")))?;
        let (dir, scratch2, digest2, reference2) = (store.dir().to_path_buf(), scratch.clone(), digest.clone(), reference.to_string());
        let added = tokio::task::spawn_blocking(move || {
            let store = ImageStore::open(dir)?;
            store.add(
                &manifest,
                &digest2,
                config.as_bytes(),
                &mut |d| {
                    let path = scratch2.join(d.digest().digest());
                    std::fs::File::open(&path).map(|f| Box::new(f) as Box<dyn Read>).map_err(|source| ImageError::Io {
                        what: "opening".into(),
                        path,
                        source,
                    })
                },
                Some(&reference2),
            )
        })
        .await
        .map_err(|e| fail(format!("unpacking: {e}")))?;
        added
    }
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_registries_are_plain_http() {
        for r in ["127.0.0.1:5000", "localhost", "localhost:5000", "[::1]:5000"] {
            assert!(super::is_loopback(r), "{r}");
        }
        for r in ["docker.io", "10.0.0.1:5000", "registry.local:443"] {
            assert!(!super::is_loopback(r), "{r}");
        }
    }

    /// A loopback port that counts the connections made to it, and answers each with
    /// `reply` or hangs up at once.
    fn counting_port(reply: Option<&'static str>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(reply) = reply {
                    let mut head = Vec::new();
                    let mut byte = [0u8];
                    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                        head.push(byte[0]);
                    }
                    let _ = conn.write_all(reply.as_bytes());
                }
            }
        });
        (addr, count)
    }

    /// One pull asks a source once, whatever it answered; a source that hung up is not
    /// asked again (oci-client would repeat its preflight before every request). The
    /// control: a new pull asks again, and the ports count those asks.
    #[tokio::test]
    async fn a_pull_asks_each_source_once() {
        use super::{Client, ClientConfig, ClientProtocol, Reached, Reference, RegistryAuth};
        use std::sync::atomic::Ordering::SeqCst;
        let (answering, answers) = counting_port(Some("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        let (hanging_up, hang_ups) = counting_port(None);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_from(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() }).unwrap();
        let at = |source: &str| Reference::with_tag(source.to_string(), "test/busybox".into(), "1".into());
        let mut reached = Reached::default();
        for _ in 0..3 {
            assert_eq!(reached.ask(&client, &at(&answering), &RegistryAuth::Anonymous).await, Ok(()));
            let hung_up = reached.ask(&client, &at(&hanging_up), &RegistryAuth::Anonymous).await;
            assert!(hung_up.is_err(), "{hung_up:?}");
        }
        assert_eq!((answers.load(SeqCst), hang_ups.load(SeqCst)), (1, 1), "connections made by three asks in one pull");
        let mut next_pull = Reached::default();
        assert_eq!(next_pull.ask(&client, &at(&answering), &RegistryAuth::Anonymous).await, Ok(()));
        assert!(next_pull.ask(&client, &at(&hanging_up), &RegistryAuth::Anonymous).await.is_err());
        assert_eq!((answers.load(SeqCst), hang_ups.load(SeqCst)), (2, 2), "connections made once another pull asked");
    }

    /// Credentials go to the image's own registry only, never to a mirror, and are
    /// never printed.
    #[test]
    fn credentials_go_to_the_images_registry_alone_and_are_never_printed() {
        use super::{Credentials, RegistryAuth};
        let basic = Credentials::from_pair("me:pa:ss").unwrap();
        assert_eq!(basic, Credentials::Basic { username: "me".into(), password: "pa:ss".into() });
        assert!(Credentials::from_pair("no-colon").is_none());
        assert!(matches!(basic.for_source("reg.io", "reg.io"), RegistryAuth::Basic(u, p) if u == "me" && p == "pa:ss"));
        let bearer = Credentials::Bearer("tok".into());
        assert!(matches!(bearer.for_source("reg.io", "reg.io"), RegistryAuth::Bearer(t) if t == "tok"));
        for creds in [&basic, &bearer, &Credentials::Anonymous] {
            assert!(matches!(creds.for_source("mirror.io", "reg.io"), RegistryAuth::Anonymous), "{creds:?} went to a mirror");
        }
        assert_eq!(format!("{basic:?} {bearer:?}"), "Basic(me, <redacted>) Bearer(<redacted>)");
    }

    #[test]
    fn one_failure_is_said_as_it_is_and_several_as_a_list() {
        assert_eq!(super::one_or_all(vec!["a: 404".into()]), "a: 404");
        assert_eq!(super::one_or_all(vec!["a: 404".into(), "b: refused".into()]), "no source had it: a: 404; b: refused");
    }

    #[test]
    fn a_token_service_refusal_says_whose_pull_and_what_to_check() {
        use super::RegistryAuth;
        let anonymous = super::refused(&RegistryAuth::Anonymous, "");
        assert!(
            anonymous.contains("refused an anonymous pull (give credentials: crictl pull --creds")
                && anonymous.ends_with("no reason given"),
            "{anonymous}"
        );
        let basic = super::refused(&RegistryAuth::Basic("u".into(), "hunter2".into()), &format!("<html>{}</html>", "x".repeat(5000)));
        assert!(basic.contains("refused the credentials given (check them") && basic.contains("it said \"<html>xxx"), "{basic}");
        assert!(basic.len() < 500 && !basic.contains("hunter2"), "{} bytes: {basic}", basic.len());
    }

    #[test]
    fn mirrors_are_tried_in_order_before_the_registry() {
        let opts = super::PullOptions {
            mirrors: vec!["index.docker.io=127.0.0.1:5000,mirror.gcr.io".parse().unwrap(), "quay.io=q.local".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(opts.sources("docker.io").collect::<Vec<_>>(), ["127.0.0.1:5000", "mirror.gcr.io", "docker.io"]);
        assert_eq!(opts.sources("ghcr.io").collect::<Vec<_>>(), ["ghcr.io"]);
        assert_eq!(opts.sources("Quay.IO").collect::<Vec<_>>(), ["q.local", "Quay.IO"]);
        let r: super::Reference = "docker.io/library/busybox:1.36".parse().unwrap();
        assert_eq!(super::at_source(&r, "mirror.gcr.io").whole(), "mirror.gcr.io/library/busybox:1.36");
        for bad in ["docker.io", "=m", "docker.io=", "docker.io=http://m/x", "docker.io=a,,b"] {
            let err = bad.parse::<super::RegistryMirror>().unwrap_err();
            assert!(err.contains("HOST=MIRROR"), "{bad}: {err}");
        }
    }
}
