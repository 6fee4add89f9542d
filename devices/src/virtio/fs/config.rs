//! The virtio-fs configuration space (virtio 1.2, 5.11.4) and the rules for
//! its tag.

/// Bytes of the tag field; a tag of exactly this length has no NUL.
pub const TAG_LEN: usize = 36;
/// Size of the configuration space: the tag plus `num_request_queues`.
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// Why a tag cannot name a virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// The tag is empty.
    #[error("virtio-fs tag is empty")]
    Empty,
    /// The tag does not fit the configuration space.
    #[error("virtio-fs tag `{tag}` is {len} bytes; at most {TAG_LEN} are allowed")]
    TooLong {
        /// The tag.
        tag: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The tag contains a NUL byte (the guest would see it cut short).
    #[error("virtio-fs tag contains a NUL byte")]
    Nul,
}

/// Checks that `tag` can be the share's tag: 1 to [`TAG_LEN`] bytes, no NUL.
pub fn check_tag(tag: &str) -> Result<(), TagError> {
    if tag.is_empty() {
        return Err(TagError::Empty);
    }
    if tag.len() > TAG_LEN {
        return Err(TagError::TooLong {
            tag: tag.to_string(),
            len: tag.len(),
        });
    }
    if tag.contains('\0') {
        return Err(TagError::Nul);
    }
    Ok(())
}

/// The configuration space: the tag, NUL-padded, then the number of request
/// queues (little endian).
pub fn config_space(
    tag: &str,
    num_request_queues: u32,
) -> Result<[u8; CONFIG_SPACE_SIZE], TagError> {
    check_tag(tag)?;
    let mut config = [0u8; CONFIG_SPACE_SIZE];
    config[..tag.len()].copy_from_slice(tag.as_bytes());
    config[TAG_LEN..].copy_from_slice(&num_request_queues.to_le_bytes());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_1_to_36_bytes_without_nul_are_accepted() {
        assert_eq!(check_tag(""), Err(TagError::Empty));
        assert!(check_tag("a").is_ok());
        assert!(check_tag(&"x".repeat(TAG_LEN)).is_ok());
        assert!(matches!(
            check_tag(&"x".repeat(TAG_LEN + 1)),
            Err(TagError::TooLong { len: 37, .. })
        ));
        // Bytes, not characters: 18 two-byte characters fit, 19 do not.
        assert!(check_tag(&"é".repeat(18)).is_ok());
        assert!(check_tag(&"é".repeat(19)).is_err());
        assert_eq!(check_tag("a\0b"), Err(TagError::Nul));
    }

    #[test]
    fn config_space_is_the_padded_tag_and_the_queue_count() {
        let config = config_space("share", 1).unwrap();
        assert_eq!(&config[..5], b"share");
        assert!(config[5..TAG_LEN].iter().all(|&b| b == 0));
        assert_eq!(&config[TAG_LEN..], &1u32.to_le_bytes());
        let full = config_space(&"t".repeat(TAG_LEN), 3).unwrap();
        assert!(full[..TAG_LEN].iter().all(|&b| b == b't'));
        assert_eq!(&full[TAG_LEN..], &3u32.to_le_bytes());
        assert!(config_space("", 1).is_err());
    }
}
