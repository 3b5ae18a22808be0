//! Arbitrary bytes as a command body: `parse` never panics and returns either a command
//! whose fields validate again, or a typed rejection.

#![no_main]

use invite_worker::domain::{
    BackendResolver, ErrorKind, GroupId, GroupIdStyle, SessionId, command,
};
use libfuzzer_sys::fuzz_target;

/// Two backends, one of each group-id style.
struct Backends;

impl BackendResolver for Backends {
    fn default_backend(&self) -> &str {
        "sim"
    }

    fn group_style(&self, backend: &str) -> Option<GroupIdStyle> {
        match backend {
            "sim" => Some(GroupIdStyle::Jid),
            "meta" => Some(GroupIdStyle::Opaque),
            _ => None,
        }
    }
}

fuzz_target!(|body: &[u8]| {
    match command::parse(body, &Backends) {
        Ok(cmd) => {
            assert!(SessionId::parse(cmd.session.as_str()).is_ok());
            let style = Backends
                .group_style(&cmd.backend)
                .expect("a configured backend");
            assert!(GroupId::parse(cmd.group.as_str(), style).is_ok());
            for text in [&cmd.reason, &cmd.requested_by].into_iter().flatten() {
                assert!(text.chars().count() <= 500);
            }
        }
        Err(rej) => {
            assert!(matches!(
                rej.kind,
                ErrorKind::InvalidCommand | ErrorKind::UnknownBackend
            ));
            assert!(!rej.reason.is_empty());
        }
    }
});
