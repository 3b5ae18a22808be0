//! Arbitrary provider answers (status, `Retry-After`, body) read by every HTTP adapter:
//! never a panic; a link is always a valid invite code; a refusal keeps its status.
//!
//! Input layout: byte 0 picks the kind, bytes 1–2 the status, byte 3 the length `n` of
//! the `Retry-After` value that follows, the rest is the body.

#![no_main]

use invite_worker::{
    backend::{http::Reply, read_reply},
    domain::{BackendKind, InviteCode},
};
use libfuzzer_sys::fuzz_target;

const KINDS: [BackendKind; 6] = [
    BackendKind::Wasend,
    BackendKind::Wawp,
    BackendKind::Gateway,
    BackendKind::MetaCloud,
    BackendKind::Waha,
    BackendKind::Evolution,
];

fuzz_target!(|data: &[u8]| {
    let [k, s0, s1, n, rest @ ..] = data else {
        return;
    };
    let kind = KINDS[usize::from(*k) % KINDS.len()];
    let status = 100 + u16::from_be_bytes([*s0, *s1]) % 500;
    let n = usize::from(*n).min(rest.len());
    let (retry_after, body) = rest.split_at(n);
    let reply = Reply::from_parts(status, &[("retry-after", retry_after)], body.to_vec());
    match read_reply(kind, &reply) {
        Ok(link) => {
            assert!(InviteCode::parse(link.code.as_str()).is_ok());
            assert!((200..300).contains(&status));
        }
        Err(e) => {
            assert_eq!(e.http_status, Some(status), "{e:?}");
            assert!(e.retry_after.is_none() || e.is_transient(), "{e:?}");
        }
    }
});
