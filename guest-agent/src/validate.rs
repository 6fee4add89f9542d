//! Validation of request fields that name things on the filesystem or in
//! the agent's tables: ids, bundle paths, the spec's root path.

use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, AgentResult};

/// Longest container or exec id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Checks a container or exec id: non-empty, at most 64 characters of
/// `[A-Za-z0-9_.-]`, and not `.` or `..` (ids become path components).
pub fn id(kind: &str, value: &str) -> AgentResult<()> {
    if value.is_empty() {
        return Err(AgentError::InvalidArgument(format!(
            "{kind} must not be empty"
        )));
    }
    if value.len() > MAX_ID_LEN {
        return Err(AgentError::InvalidArgument(format!(
            "{kind} is {} characters long, at most {MAX_ID_LEN} allowed",
            value.len()
        )));
    }
    if value == "." || value == ".." {
        return Err(AgentError::InvalidArgument(format!(
            "{kind} {value:?} is not allowed"
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(AgentError::InvalidArgument(format!(
            "{kind} {value:?} contains {c:?}; only [A-Za-z0-9_.-] are allowed"
        )));
    }
    Ok(())
}

/// Checks that the bundle path is absolute and an existing directory, and
/// returns its canonical form.
pub fn bundle(path: &str) -> AgentResult<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || !p.is_absolute() {
        return Err(AgentError::InvalidArgument(format!(
            "bundle path {path:?} must be absolute"
        )));
    }
    let canon = p
        .canonicalize()
        .map_err(|e| AgentError::InvalidArgument(format!("bundle path {path:?}: {e}")))?;
    if !canon.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "bundle path {path:?} is not a directory"
        )));
    }
    Ok(canon)
}

/// Resolves the spec's root.path (relative to the bundle unless absolute)
/// and checks that the result, with every symlink followed, lies inside
/// the canonical bundle. Returns the canonical root path.
pub fn root_inside_bundle(bundle: &Path, root: &Path) -> AgentResult<PathBuf> {
    if root.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(AgentError::InvalidArgument(format!(
            "root.path {} must not contain '..'",
            root.display()
        )));
    }
    let joined = if root.is_absolute() {
        root.to_path_buf()
    } else {
        bundle.join(root)
    };
    let canon = joined
        .canonicalize()
        .map_err(|e| AgentError::InvalidArgument(format!("root.path {}: {e}", joined.display())))?;
    if !canon.starts_with(bundle) || canon == bundle {
        return Err(AgentError::InvalidArgument(format!(
            "root.path {} resolves to {}, outside the bundle {}",
            root.display(),
            canon.display(),
            bundle.display()
        )));
    }
    if !canon.is_dir() {
        return Err(AgentError::InvalidArgument(format!(
            "root.path {} is not a directory",
            canon.display()
        )));
    }
    Ok(canon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-1", "A_b.c", &"x".repeat(64)] {
            assert!(id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65), "a\0b"] {
            assert!(
                matches!(id("id", bad), Err(AgentError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bundle_must_be_absolute_existing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(bundle(dir.path().to_str().unwrap()).is_ok());
        assert!(bundle("relative/dir").is_err());
        assert!(bundle("").is_err());
        assert!(bundle("/nonexistent/bundle/x").is_err());
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(bundle(file.to_str().unwrap()).is_err());
    }

    #[test]
    fn root_containment() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().canonicalize().unwrap();
        std::fs::create_dir(b.join("rootfs")).unwrap();
        assert_eq!(
            root_inside_bundle(&b, Path::new("rootfs")).unwrap(),
            b.join("rootfs")
        );
        assert!(root_inside_bundle(&b, &b.join("rootfs")).is_ok());
        assert!(root_inside_bundle(&b, Path::new("../x")).is_err());
        assert!(root_inside_bundle(&b, Path::new("rootfs/../../etc")).is_err());
        assert!(root_inside_bundle(&b, Path::new("/etc")).is_err());
        assert!(root_inside_bundle(&b, Path::new(".")).is_err());
        assert!(root_inside_bundle(&b, Path::new("missing")).is_err());
        std::os::unix::fs::symlink("/", b.join("escape")).unwrap();
        assert!(root_inside_bundle(&b, Path::new("escape")).is_err());
        std::os::unix::fs::symlink("rootfs", b.join("inside")).unwrap();
        assert!(root_inside_bundle(&b, Path::new("inside")).is_ok());
    }
}
