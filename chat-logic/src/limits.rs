//! The limits every request is checked against; the broker builds one
//! [`Limits`] from its config, checks it with [`Limits::validate`] (the one
//! definition of what a sensible limit is) and passes it in.

/// The largest `max_group_members` the config may set.
pub const MAX_GROUP_MEMBERS_CEILING: usize = 500;

/// Longest push `platform` (the Matrix `app_id`), in bytes.
pub const MAX_PUSH_PLATFORM_BYTES: usize = 64;

/// Longest push `token` (the Matrix `pushkey`), in bytes.
pub const MAX_PUSH_TOKEN_BYTES: usize = 4096;

/// Size and paging limits of the chat rules. `Default` gives the contract's
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest message text, in Unicode scalar values (default 100,000).
    pub max_text_chars: usize,
    /// Longest `client_msg_id`, in bytes (default 128).
    pub max_client_msg_id_bytes: usize,
    /// Most members of a group, creator included (default 100, at most 500).
    pub max_group_members: usize,
    /// Longest group name, in Unicode scalar values (default 256).
    pub max_group_name_chars: usize,
    /// `Sync` page size when the request says 0 (default 100).
    pub default_sync_limit: u32,
    /// Largest `Sync` page; larger requests are clamped (default 1000).
    pub max_sync_limit: u32,
    /// `History` page size when the request says 0 (default 50).
    pub default_history_limit: u32,
    /// Largest `History` page; larger requests are clamped (default 1000).
    pub max_history_limit: u32,
    /// Most distinct users one request may name (`ChangeFriends` add and
    /// remove together, `QueryPresence`, `SystemMessage.users`; default 1000).
    pub max_users_per_request: usize,
    /// Most friendship links (friends and pending requests, both ways) one
    /// user may have (default 1000).
    pub max_friends: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 100_000,
            max_client_msg_id_bytes: 128,
            max_group_members: 100,
            max_group_name_chars: 256,
            default_sync_limit: 100,
            max_sync_limit: 1000,
            default_history_limit: 50,
            max_history_limit: 1000,
            max_users_per_request: 1000,
            max_friends: 1000,
        }
    }
}

/// A limit that makes no sense: the field at fault (named as the broker's
/// config key of the same name) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct InvalidLimit {
    /// The [`Limits`] field at fault.
    pub field: &'static str,
    /// What is wrong with its value, e.g. "must be at least 1".
    pub message: String,
}

impl Limits {
    /// Checks that the limits make sense; the error names the bad field.
    pub fn validate(&self) -> Result<(), InvalidLimit> {
        if !(1..=MAX_GROUP_MEMBERS_CEILING).contains(&self.max_group_members) {
            return Err(InvalidLimit {
                field: "max_group_members",
                message: format!(
                    "must be between 1 and {MAX_GROUP_MEMBERS_CEILING}, got {}",
                    self.max_group_members
                ),
            });
        }
        check_positive("max_text_chars", self.max_text_chars)?;
        check_positive("max_client_msg_id_bytes", self.max_client_msg_id_bytes)?;
        check_positive("max_group_name_chars", self.max_group_name_chars)?;
        check_positive("max_users_per_request", self.max_users_per_request)?;
        check_positive("max_friends", self.max_friends)?;
        check_page(
            "default_sync_limit",
            self.default_sync_limit,
            self.max_sync_limit,
        )?;
        check_page(
            "default_history_limit",
            self.default_history_limit,
            self.max_history_limit,
        )
    }

    /// The `Sync` page size for a requested `limit` (0 => default, clamped).
    pub fn sync_page(&self, limit: u32) -> u32 {
        page_size(limit, self.default_sync_limit, self.max_sync_limit)
    }

    /// The `History` page size for a requested `limit` (0 => default, clamped).
    pub fn history_page(&self, limit: u32) -> u32 {
        page_size(limit, self.default_history_limit, self.max_history_limit)
    }
}

fn page_size(requested: u32, default: u32, max: u32) -> u32 {
    match requested {
        0 => default.min(max),
        n => n.min(max),
    }
}

fn check_positive(field: &'static str, value: usize) -> Result<(), InvalidLimit> {
    if value == 0 {
        let message = "must be at least 1".to_owned();
        return Err(InvalidLimit { field, message });
    }
    Ok(())
}

/// A page's default size: at least 1, at most the page's maximum.
fn check_page(default_field: &'static str, default: u32, max: u32) -> Result<(), InvalidLimit> {
    if default == 0 || default > max {
        let max_field = default_field.replacen("default_", "max_", 1);
        let message = format!("must be between 1 and {max_field} ({max}), got {default}");
        return Err(InvalidLimit {
            field: default_field,
            message,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let limits = Limits::default();
        assert_eq!(limits.max_text_chars, 100_000);
        assert_eq!(limits.max_group_members, 100);
        assert_eq!(limits.max_client_msg_id_bytes, 128);
        assert_eq!(limits.max_users_per_request, 1000);
        assert_eq!(limits.max_friends, 1000);
        assert_eq!(limits.validate(), Ok(()));
    }

    #[test]
    fn page_sizes() {
        let limits = Limits::default();
        assert_eq!(limits.sync_page(0), 100);
        assert_eq!(limits.sync_page(1), 1);
        assert_eq!(limits.sync_page(1000), 1000);
        assert_eq!(limits.sync_page(1001), 1000);
        assert_eq!(limits.sync_page(u32::MAX), 1000);
        assert_eq!(limits.history_page(0), 50);
        assert_eq!(limits.history_page(7), 7);
        assert_eq!(limits.history_page(5000), 1000);
    }

    #[test]
    fn group_size_ceiling() {
        let at_ceiling = Limits {
            max_group_members: 500,
            ..Limits::default()
        };
        assert_eq!(at_ceiling.validate(), Ok(()));
        for bad in [0, 501] {
            let limits = Limits {
                max_group_members: bad,
                ..Limits::default()
            };
            let error = limits.validate().unwrap_err();
            assert_eq!(error.field, "max_group_members", "{error}");
            assert!(error.to_string().contains("max_group_members"), "{error}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        let zero_text = Limits {
            max_text_chars: 0,
            ..Limits::default()
        };
        assert_eq!(zero_text.validate().unwrap_err().field, "max_text_chars");
        let bad_page = Limits {
            default_history_limit: 2000,
            ..Limits::default()
        };
        let error = bad_page.validate().unwrap_err();
        assert_eq!(error.field, "default_history_limit", "{error}");
        assert!(error.message.contains("max_history_limit"), "{error}");
        let zero_page = Limits {
            default_sync_limit: 0,
            ..Limits::default()
        };
        assert!(zero_page.validate().is_err());
        for (name, limits) in [
            (
                "max_users_per_request",
                Limits {
                    max_users_per_request: 0,
                    ..Limits::default()
                },
            ),
            (
                "max_friends",
                Limits {
                    max_friends: 0,
                    ..Limits::default()
                },
            ),
        ] {
            let error = limits.validate().unwrap_err();
            assert_eq!(error.field, name, "{error}");
        }
        let one = Limits {
            max_users_per_request: 1,
            max_friends: 1,
            ..Limits::default()
        };
        assert_eq!(one.validate(), Ok(()));
    }
}
