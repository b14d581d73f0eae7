//! Getting a cell's module bytes: from the JetStream object store `cbs-modules` by digest,
//! or from an https URL. Either way the bytes' sha256 must equal the digest the Cell
//! names before anything compiles them. A URL in an error is shown without its secrets
//! (userinfo, signed query parameters).

use cellbus_contracts::resources::ModuleSpec;
use cellbus_control::digest_of;

use crate::shared::Shared;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the module has no digest to check its bytes against")]
    NoDigest,
    #[error("a command module needs a process pool")]
    Command,
    #[error(transparent)]
    Store(#[from] cellbus_control::Error),
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error("the bytes from {url} have digest {actual}, not {expected}")]
    Mismatch {
        url: String,
        expected: String,
        actual: String,
    },
}

/// The module's digest and its verified bytes.
pub async fn fetch(shared: &Shared, module: &ModuleSpec) -> Result<(String, Vec<u8>), FetchError> {
    if module.command.is_some() {
        return Err(FetchError::Command);
    }
    let digest = module.digest.clone().ok_or(FetchError::NoDigest)?;
    let bytes = match &module.url {
        None => cellbus_control::fetch_module(&shared.buckets.modules, &digest).await?,
        Some(url) => {
            let shown = cellbus_control::redact_url(url).into_owned();
            // reqwest's errors quote the URL whole.
            let download = |source: reqwest::Error| FetchError::Download {
                url: shown.clone(),
                source: source.without_url(),
            };
            let response = shared.http.get(url).send().await.map_err(download)?;
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: shown.clone(),
                    status: response.status().as_u16(),
                });
            }
            let bytes = response.bytes().await.map_err(download)?.to_vec();
            let actual = digest_of(&bytes);
            if actual != digest {
                return Err(FetchError::Mismatch {
                    url: shown.clone(),
                    expected: digest,
                    actual,
                });
            }
            bytes
        }
    };
    Ok((digest, bytes))
}
