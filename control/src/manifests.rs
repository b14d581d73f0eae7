//! Reading Cell and CellPool manifests from files and directories, for `cellbus check`,
//! `cellbus up` and `cellbus-operator render`. Judging them is the contracts' job
//! (`cellbus_contracts::manifest`).

use std::io;
use std::path::{Path, PathBuf};

use cellbus_contracts::manifest::{self, Checked, ManifestError};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("{path} holds no YAML manifest")]
    Empty { path: PathBuf },
}

/// The YAML documents of every `.yaml`/`.yml` file under `paths` (directories are walked
/// in name order, so the result does not depend on the file system).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Value>, LoadError> {
    let mut documents = Vec::new();
    for path in paths {
        let files = yaml_files(path)?;
        if files.is_empty() {
            return Err(LoadError::Empty { path: path.clone() });
        }
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            let parsed = manifest::parse_yaml(&text)
                .map_err(|source| LoadError::Parse { path: file, source })?;
            documents.extend(parsed);
        }
    }
    Ok(documents)
}

/// Loads and checks manifests, verifying signatures now.
pub fn check(paths: &[PathBuf]) -> Result<Checked, LoadError> {
    let documents = load(paths)?;
    Ok(manifest::check_with(
        &documents,
        &crate::signature::SignatureCheck::with_documents(&documents),
    ))
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(read_error)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read_error)?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(yaml_files(&entry)?);
        } else if entry
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(entry);
        }
    }
    Ok(files)
}
