//! `--pid-file PATH`: the emulator's process id and a newline, written (through a temporary
//! file and a rename, so a reader never sees half of it) once every socket listens, and
//! removed at a clean exit if it still holds that id.

use super::ServiceError;
use std::path::{Path, PathBuf};

/// A written PID file; dropping it removes the file.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's id into `path` (replacing what was there).
    pub fn create(path: &Path) -> Result<PidFile, ServiceError> {
        let pid = std::process::id();
        let err = |source| ServiceError::PidFile {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{pid}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                err(e)
            })?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Another instance may have taken the path over since: leave its file alone.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim().parse::<u32>() == Ok(self.pid));
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_pid_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("emu.pid");
        std::fs::write(&p, "stale\n").unwrap();
        let f = PidFile::create(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(f);
        assert!(!p.exists());
    }

    #[test]
    fn a_file_taken_over_by_another_process_stays() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("emu.pid");
        let f = PidFile::create(&p).unwrap();
        std::fs::write(&p, "1\n").unwrap();
        drop(f);
        assert!(p.exists());
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let e = PidFile::create(Path::new("/nonexistent-dir/emu.pid")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/emu.pid"), "{e}");
    }
}
