//! Files and folders only their user may read or change: the public-key cache and the log.
//! Unix modes (`0700` folders, `0600` files), owner checks and `O_NOFOLLOW`; elsewhere plain
//! file operations (no other OS is built today).

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::path::Path;

/// Refuses a file or folder that is not the user's own or that others may write (whoever can
/// write the public-key cache could choose the keys offered), and a symbolic link.
#[cfg(unix)]
pub fn check_private(path: &Path, meta: &Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.file_type().is_symlink() {
        Err(format!("{} is a symbolic link", path.display()))
    } else if meta.uid() != uid {
        Err(format!("{} belongs to user {}, not to this user ({uid})", path.display(), meta.uid()))
    } else if meta.mode() & 0o022 != 0 {
        Err(format!("others may write {} (mode {:o}): run `chmod go-w` on it", path.display(), meta.mode() & 0o777))
    } else {
        Ok(())
    }
}

#[cfg(not(unix))]
pub fn check_private(_: &Path, _: &Metadata) -> Result<(), String> {
    Ok(())
}

/// Creates `folder` and its missing parents, each `0700`.
pub fn create_private_folder(folder: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

/// Writes a new file (never an existing one) `0600` with `bytes`, synced to disk.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Opens `path` for appending: its folder created `0700`, the file `0600` (also when an earlier
/// version made it wider), never through a symbolic link (`O_NOFOLLOW`: the open fails).
pub fn open_private_append(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        create_private_folder(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = options.mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}
