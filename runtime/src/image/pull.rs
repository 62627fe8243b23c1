//! Pulling an image from an OCI distribution registry into the store: manifest and
//! config first, then each layer blob the store lacks into a scratch file, then
//! [`ImageStore::add`] verifies and unpacks them as for an import.

use std::io::Read;
use std::net::IpAddr;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::{normalize_reference, Image, ImageError, ImageStore};

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback ones always are.
    pub insecure_registries: Vec<String>,
}

fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Pulls `reference` into `store`; `progress` hears one line per step.
pub async fn pull(
    store: &ImageStore,
    reference: &str,
    opts: &PullOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<Image, ImageError> {
    let normalized = normalize_reference(reference)?;
    let fail = |why: String| ImageError::Pull { reference: normalized.clone(), why };
    let r: Reference = normalized.parse().map_err(|e| fail(format!("{e}")))?;
    // reqwest needs a process-wide TLS provider; a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut plain: Vec<String> = opts.insecure_registries.clone();
    if is_loopback(r.registry()) {
        plain.push(r.registry().to_string());
    }
    let client = Client::try_from(ClientConfig { protocol: ClientProtocol::HttpsExcept(plain), ..Default::default() })
        .map_err(|e| fail(format!("setting up the registry client: {e}")))?;
    let (manifest, digest, config) =
        client.pull_manifest_and_config(&r, &RegistryAuth::Anonymous).await.map_err(|e| fail(e.to_string()))?;
    progress(format!("{normalized}: manifest {digest}, {} layer(s)", manifest.layers.len()));
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
            let file = tokio::fs::File::create(&path).await.map_err(|source| ImageError::Io {
                what: "creating".into(),
                path: path.clone(),
                source,
            })?;
            client.pull_blob(&r, layer, file).await.map_err(|e| fail(format!("layer {}: {e}", layer.digest)))?;
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
}
