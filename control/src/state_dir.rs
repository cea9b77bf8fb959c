//! The state directory holds password hashes, API token hashes, the certificate's keys and the
//! setup token: only its owner may enter it. It is created 0700, and one made wider (by an
//! older version, or by hand) is narrowed, with a log line.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;
use tracing::warn;

/// The state directory's mode.
pub const MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) 0700, or narrows an existing one to 0700.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(MODE)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & !MODE != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))
            .with_context(|| format!("narrowing {} to 0700", dir.display()))?;
        warn!(dir = %dir.display(), was = format!("{mode:o}"), "the state directory was open to others: now 0700");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_made_and_kept_private() {
        let base = std::env::temp_dir().join(format!("sluice-state-dir-{}", std::process::id()));
        let dir = base.join("state");
        ensure(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "narrowed");
        std::fs::remove_dir_all(base).unwrap();
    }
}
