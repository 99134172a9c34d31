//! The durable state: one redb file holding one record per resource. Every API action is one
//! write transaction, committed (redb fsyncs on commit) before the response is sent, so an
//! acknowledged change survives any crash and a half-applied action never becomes visible.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

/// Record key (`lb/<id>`, `acl/<id>`, …) → record bytes.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
}

/// One record written or deleted by an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(String, Vec<u8>),
    Delete(String),
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens or creates the store. The file holds private keys of certificates, so it and its
    /// directory are readable by the owner only.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io)?;
            }
        }
        let db = Database::create(path).map_err(|e| StoreError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        // Create the table up front so reads of a fresh store see it.
        store.commit(&[])?;
        Ok(store)
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Every record, in key order.
    pub fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(RECORDS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Applies `changes` atomically and durably.
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.db_err(e))?;
            for c in changes {
                match c {
                    Change::Put(k, v) => {
                        table
                            .insert(k.as_str(), v.as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                    Change::Delete(k) => {
                        table.remove(k.as_str()).map_err(|e| self.db_err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Size of the store file on disk.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_is_atomic_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("slb-store-{}", std::process::id()));
        let path = dir.join("state.redb");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&path).unwrap();
            s.commit(&[
                Change::Put("a".into(), b"1".to_vec()),
                Change::Put("b".into(), b"2".to_vec()),
            ])
            .unwrap();
            s.commit(&[Change::Delete("a".into())]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), vec![("b".to_string(), b"2".to_vec())]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private keys live here: owner only");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
