//! The shared classification of failures: transport errors, `Retry-After`, and the
//! default reading of a refusal's HTTP status and message text as an error kind.

use std::time::{Duration, SystemTime};

use crate::domain::{BackendError, ErrorKind};

/// A `Retry-After` value, as delta seconds or an HTTP date (a past date means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Maps a transport failure: a timeout or a failed connection is `backend_unavailable`
/// (transient); a request that cannot even be built is `backend_protocol`. The URL is
/// dropped from the error so that a token in its query cannot leak.
pub fn transport_error(error: reqwest::Error) -> BackendError {
    let error = error.without_url();
    if error.is_timeout() {
        return BackendError::new(ErrorKind::BackendUnavailable, "timeout");
    }
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if error.is_builder() {
        return BackendError::protocol(format!("cannot build the request: {cause}"));
    }
    let what = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    BackendError::new(ErrorKind::BackendUnavailable, format!("{what}: {cause}"))
}

/// The default classification of a refusal, from its HTTP status and its lower-cased
/// message text (see [`super::Reply::error_text`]):
/// 1. WhatsApp's own refusal words, passed through by WhatsApp-Web style gateways, win:
///    `rate-overlimit`, `not-authorized` (not an admin), `item-not-found` (no such group);
/// 2. then the status: 401, 403, 404 (session or group by the text), 408, 429 and 5xx;
/// 3. any other status (400, other 4xx, a 2xx reporting failure) by what the text
///    describes, else `backend_protocol`.
pub fn classify(status: u16, text: &str) -> ErrorKind {
    if let Some(kind) = whatsapp_refusal(text) {
        return kind;
    }
    match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::NotAdmin,
        404 => not_found(text),
        // Request Timeout: the server gave up waiting; transient like a network timeout.
        408 => ErrorKind::BackendUnavailable,
        429 => ErrorKind::RateLimited,
        500..=599 => ErrorKind::BackendUnavailable,
        _ => described(text).unwrap_or(ErrorKind::BackendProtocol),
    }
}

/// A "not found" refusal: the session's when the text names a session or instance,
/// else the group's.
pub fn not_found(text: &str) -> ErrorKind {
    if text.contains("session") || text.contains("instance") {
        ErrorKind::SessionNotFound
    } else {
        ErrorKind::GroupNotFound
    }
}

/// WhatsApp's own refusal words, as WhatsApp-Web style gateways pass them through.
pub fn whatsapp_refusal(text: &str) -> Option<ErrorKind> {
    first_word(
        text,
        &[
            ("rate-overlimit", ErrorKind::RateLimited),
            ("not-authorized", ErrorKind::NotAdmin),
            ("item-not-found", ErrorKind::GroupNotFound),
        ],
    )
}

/// The kind of the first of `words` that `text` contains (in the order of `words`).
pub fn first_word(text: &str, words: &[(&str, ErrorKind)]) -> Option<ErrorKind> {
    words
        .iter()
        .find_map(|(word, kind)| text.contains(word).then_some(*kind))
}

/// What a refusal's text describes in plain words, if anything: a missing session or
/// group, a missing admin right, a disconnected session, a rate limit, a bad key.
pub fn described(text: &str) -> Option<ErrorKind> {
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&["not found", "not exist"]) {
        Some(not_found(text))
    } else if has(&["admin", "not authorized"]) {
        Some(ErrorKind::NotAdmin)
    } else if has(&["not connected", "disconnected", "not working"]) {
        Some(ErrorKind::SessionDisconnected)
    } else if has(&["rate limit", "too many"]) {
        Some(ErrorKind::RateLimited)
    } else if has(&["unauthorized", "api key", "apikey"]) {
        Some(ErrorKind::Unauthorized)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn classify_prefers_whatsapp_words_then_status_then_text() {
        use ErrorKind::*;
        for (status, text, kind) in [
            (500, "rate-overlimit", RateLimited),
            (404, "error: not-authorized", NotAdmin),
            (500, "item-not-found", GroupNotFound),
            (401, "unauthorized", Unauthorized),
            (403, "", NotAdmin),
            (404, "session not found", SessionNotFound),
            (404, "the \"x\" instance does not exist", SessionNotFound),
            (404, "group not found", GroupNotFound),
            (429, "", RateLimited),
            (503, "", BackendUnavailable),
            (408, "", BackendUnavailable),
            (200, "not authorized to get invite link", NotAdmin),
            (502, "bad gateway", BackendUnavailable),
            (400, "invalid parameters", BackendProtocol),
            (400, "instance does not exist", SessionNotFound),
            (409, "", BackendProtocol),
            (200, "you are not an admin of this group", NotAdmin),
            (200, "session is not connected", SessionDisconnected),
            (200, "something odd", BackendProtocol),
            (302, "", BackendProtocol),
        ] {
            assert_eq!(classify(status, text), kind, "{status} {text}");
        }
    }
}
