//! What the store's test crates share: scratch directories and an author.

use std::{path::PathBuf, time::SystemTime};

use sluice_store::Author;

/// A directory removed on drop.
pub struct Dir(pub PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory name for test `name`.
pub fn dir(name: &str) -> Dir {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    Dir(std::env::temp_dir().join(format!("sluice-store-{name}-{}-{nanos}", std::process::id())))
}

/// The author of a test's changes.
pub fn author(message: &str) -> Author {
    Author { who: "admin".into(), from: "192.0.2.1".into(), message: message.into() }
}
