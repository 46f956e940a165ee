//! The policy lists file (`policy.toml` in the data directory) and its one writer. Every
//! change goes through [`ListsFile`]: a reload (SIGHUP) and a management call (NIP-86) alike
//! read the file, change it, write it durably and number the result under one lock, so two
//! changes never overwrite each other, and every core puts the lists in force in that order
//! (a core skips lists older than the ones it has).
//!
//! The lock is held on glommio's blocking thread, never on a core.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::PolicyLists;

/// One version of the lists, numbered in the order they were made.
#[derive(Clone, Debug)]
pub struct Versioned {
    pub generation: u64,
    pub lists: Arc<PolicyLists>,
}

/// Shared by every core.
pub struct ListsFile {
    data_dir: PathBuf,
    /// The last generation handed out; held while a change reads and writes the file.
    generation: Mutex<u64>,
}

/// Why a change was not made.
#[derive(Debug)]
pub enum ChangeError {
    /// The change itself was refused (a bad parameter): nothing was written.
    Refused(String),
    /// The file could not be read or written: nothing changed.
    File(anyhow::Error),
}

impl ListsFile {
    /// The file as read at start, as generation 0.
    pub fn open(data_dir: PathBuf) -> anyhow::Result<(Arc<ListsFile>, Versioned)> {
        let lists = PolicyLists::load(&data_dir)?;
        let file = Arc::new(ListsFile { data_dir, generation: Mutex::new(0) });
        Ok((file, Versioned { generation: 0, lists: Arc::new(lists) }))
    }

    /// Read the file again (SIGHUP). Blocking.
    pub fn reload(&self) -> anyhow::Result<Versioned> {
        let mut generation = self.generation.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let lists = PolicyLists::load(&self.data_dir)?;
        *generation += 1;
        Ok(Versioned { generation: *generation, lists: Arc::new(lists) })
    }

    /// Read the file, apply `change` and write the result durably; the new lists once they
    /// are on disk. Blocking.
    pub fn change<T>(
        &self,
        change: impl FnOnce(&mut PolicyLists) -> Result<T, String>,
    ) -> Result<(Versioned, T), ChangeError> {
        let mut generation = self.generation.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut lists = PolicyLists::load(&self.data_dir).map_err(ChangeError::File)?;
        let answer = change(&mut lists).map_err(ChangeError::Refused)?;
        lists.check().map_err(ChangeError::Refused)?;
        lists.save(&self.data_dir).map_err(ChangeError::File)?;
        *generation += 1;
        Ok((Versioned { generation: *generation, lists: Arc::new(lists) }, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_written_numbered_and_kept_apart_from_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let (file, first) = ListsFile::open(dir.path().to_owned()).unwrap();
        assert_eq!((first.generation, first.lists.kinds_denied.len()), (0, 0));
        let (second, ()) = file
            .change(|lists| {
                lists.kinds_denied.push(7);
                Ok(())
            })
            .unwrap();
        assert_eq!(second.generation, 1);
        assert_eq!(PolicyLists::load(dir.path()).unwrap().kinds_denied, vec![7], "on disk");
        let refused = file.change(|lists| {
            lists.kinds_denied.push(8);
            Err::<(), _>("no".to_owned())
        });
        assert!(matches!(refused, Err(ChangeError::Refused(_))));
        let invalid = file.change(|lists| {
            lists.ips_blocked.push("not an address".to_owned());
            Ok(())
        });
        assert!(matches!(invalid, Err(ChangeError::Refused(_))));
        assert_eq!(PolicyLists::load(dir.path()).unwrap().kinds_denied, vec![7], "refusals write nothing");
        assert_eq!(file.reload().unwrap().generation, 2);
    }
}
