//! Each provider dialect as an adapter would speak it: its requests, auth and the shapes
//! of its answers and refusals.

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    Read,
    Reset,
}

/// One provider dialect as an adapter would speak it (wasend's two endpoint families are
/// two entries).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Provider {
    Wasend,
    WasendCode,
    Wawp,
    Gateway,
    Meta,
    Waha,
    Evolution,
}

/// What a provider is asked to refuse.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refusal {
    WrongToken,
    NotAdmin,
    UnknownSession,
    Disconnected,
    UnknownGroup,
    Throttled,
}

impl Provider {
    pub(crate) const ALL: [Provider; 7] = [
        Provider::Wasend,
        Provider::WasendCode,
        Provider::Wawp,
        Provider::Gateway,
        Provider::Meta,
        Provider::Waha,
        Provider::Evolution,
    ];

    pub(crate) fn api(self) -> &'static str {
        match self {
            Provider::Wasend | Provider::WasendCode => "wasend",
            Provider::Wawp => "wawp",
            Provider::Gateway => "gateway",
            Provider::Meta => "meta_cloud",
            Provider::Waha => "waha",
            Provider::Evolution => "evolution",
        }
    }

    pub(crate) fn session(self) -> &'static str {
        match self {
            Provider::Meta => "meta",
            _ => "sales",
        }
    }

    pub(crate) fn group(self, n: u32) -> String {
        match self {
            Provider::Meta => format!("grp_{n}"),
            _ => format!("1203630412345678{n}@g.us"),
        }
    }

    pub(crate) fn can_read(self) -> bool {
        self != Provider::Meta
    }

    /// The provider's own request for `op`, as its adapter would build it.
    pub(crate) fn request(
        self,
        sim: &Sim,
        op: Op,
        session: &str,
        group: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        let base = format!("{}/{}", sim.base, self.api());
        let (s, g) = (enc(session), enc(group));
        let c = &sim.client;
        let bearer = |r: RequestBuilder| match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let header = |r: RequestBuilder, name: &str| match token {
            Some(t) => r.header(name, t),
            None => r,
        };
        match (self, op) {
            (Provider::Wasend, Op::Read) => {
                bearer(c.get(format!("{base}/{s}/groups/{g}/invite-link")))
            }
            (Provider::Wasend, Op::Reset) => {
                bearer(c.post(format!("{base}/{s}/groups/{g}/invite-link/revoke")))
            }
            (Provider::WasendCode, Op::Read) => {
                bearer(c.get(format!("{base}/{s}/groups/{g}/invite-code")))
            }
            (Provider::WasendCode, Op::Reset) => {
                bearer(c.post(format!("{base}/{s}/groups/{g}/invite-code/revoke")))
            }
            (Provider::Wawp, _) => {
                let path = match op {
                    Op::Read => "invite-code",
                    Op::Reset => "invite-code/revoke",
                };
                let auth = token
                    .map(|t| format!("&access_token={}", enc(t)))
                    .unwrap_or_default();
                let url = format!("{base}/v2/groups/{g}/{path}?instance_id={s}{auth}");
                match op {
                    Op::Read => c.get(url),
                    Op::Reset => c.post(url),
                }
            }
            (Provider::Gateway, _) => {
                let url = format!("{base}/api/v1/sessions/{s}/groups/{g}/invite");
                bearer(match op {
                    Op::Read => c.get(url),
                    Op::Reset => c.delete(url),
                })
            }
            (Provider::Meta, Op::Reset) => bearer(
                c.post(format!("{base}/v23.0/{g}/invite_link"))
                    .json(&json!({ "messaging_product": "whatsapp" })),
            ),
            (Provider::Meta, Op::Read) => panic!("meta_cloud cannot read"),
            (Provider::Waha, Op::Read) => header(
                c.get(format!("{base}/api/{s}/groups/{g}/invite-code")),
                "X-Api-Key",
            ),
            (Provider::Waha, Op::Reset) => header(
                c.post(format!("{base}/api/{s}/groups/{g}/invite-code/revoke")),
                "X-Api-Key",
            ),
            (Provider::Evolution, Op::Read) => header(
                c.get(format!("{base}/group/inviteCode/{s}?groupJid={g}")),
                "apikey",
            ),
            (Provider::Evolution, Op::Reset) => header(
                c.post(format!("{base}/group/revokeInviteCode/{s}?groupJid={g}")),
                "apikey",
            ),
        }
    }

    /// Picks the code out of a success body, checking that the body has exactly the shape
    /// the provider's own client reads (no field missing, none added).
    pub(crate) fn code_in(self, op: Op, body: &Value) -> String {
        let code = match self {
            Provider::Wasend => {
                assert_fields(body, &["success", "inviteLink", "expiresAt"]);
                assert_eq!(body["success"], true);
                let expires = body["expiresAt"].as_str().expect("expiresAt");
                chrono::DateTime::parse_from_rfc3339(expires).expect("RFC 3339 expiresAt");
                code_from_link(&body["inviteLink"])
            }
            // Wasend's official SDK declares a plain string (`getGroupInviteCode`,
            // `revokeGroupInviteCode` in `@wasend/core`) and raises on anything else.
            Provider::WasendCode => body
                .as_str()
                .unwrap_or_else(|| panic!("not a bare code string: {body}"))
                .to_owned(),
            Provider::Wawp => {
                assert_fields(body, &["code"]);
                body["code"].as_str().expect("code").to_owned()
            }
            Provider::Gateway => {
                assert_fields(body, &["invite"]);
                code_from_link(&body["invite"])
            }
            Provider::Meta => {
                assert_fields(body, &["messaging_product", "invite_link"]);
                assert_eq!(body["messaging_product"], "whatsapp");
                code_from_link(&body["invite_link"])
            }
            Provider::Waha => code_from_link(body),
            Provider::Evolution => {
                let code = body["inviteCode"].as_str().expect("inviteCode").to_owned();
                match op {
                    Op::Read => {
                        assert_fields(body, &["inviteUrl", "inviteCode"]);
                        assert_eq!(body["inviteUrl"], format!("{LINK}{code}"));
                    }
                    Op::Reset => {
                        assert_fields(body, &["revoked", "inviteCode"]);
                        assert_eq!(body["revoked"], true);
                    }
                }
                code
            }
        };
        assert_is_code(&code);
        code
    }

    /// Asserts that `status` and `body` are this provider's answer to `refusal`.
    pub(crate) fn assert_refused(self, refusal: Refusal, status: StatusCode, body: &Value) {
        use Refusal::*;
        let context = format!("{self:?} {refusal:?}: {status} {body}");
        let expected = match (self, refusal) {
            (Provider::Wasend | Provider::WasendCode, _) => {
                assert_eq!(body["success"], false, "{context}");
                let error = body["error"].as_str().expect("error string");
                match refusal {
                    WrongToken => 401,
                    NotAdmin => 403,
                    UnknownSession => {
                        assert_eq!(error, "Session not found", "{context}");
                        404
                    }
                    UnknownGroup => {
                        assert_eq!(error, "Group not found", "{context}");
                        404
                    }
                    Disconnected => {
                        assert_eq!(error, "session disconnected", "{context}");
                        503
                    }
                    Throttled => 429,
                }
            }
            (Provider::Wawp | Provider::Waha, WrongToken) => {
                assert_eq!(body["message"], "Unauthorized", "{context}");
                401
            }
            (Provider::Wawp | Provider::Waha, NotAdmin) => {
                assert_eq!(body["exception"]["message"], "not-authorized", "{context}");
                500
            }
            (Provider::Wawp | Provider::Waha, UnknownSession) => {
                assert_eq!(body["message"], "Session not found", "{context}");
                404
            }
            (Provider::Wawp | Provider::Waha, UnknownGroup) => {
                assert_eq!(body["message"], "Group not found", "{context}");
                404
            }
            (Provider::Wawp | Provider::Waha, Disconnected) => {
                assert_eq!(body["status"], "STOPPED", "{context}");
                assert_eq!(body["session"], self.session(), "{context}");
                422
            }
            (Provider::Wawp | Provider::Waha, Throttled) => {
                assert_eq!(body["exception"]["message"], "rate-overlimit", "{context}");
                429
            }
            (Provider::Gateway, _) => {
                let (status, code) = match refusal {
                    WrongToken => (401, "unauthorized"),
                    NotAdmin => (403, "forbidden"),
                    UnknownSession | UnknownGroup => (404, "not_found"),
                    Disconnected => (501, "not_implemented"),
                    Throttled => (429, "rate_limited"),
                };
                assert_eq!(body["error"]["code"], code, "{context}");
                assert!(body["error"]["message"].is_string(), "{context}");
                assert!(body["error"]["details"].is_object(), "{context}");
                status
            }
            (Provider::Meta, _) => {
                let error = &body["error"];
                assert_eq!(error["type"], "OAuthException", "{context}");
                assert!(error["message"].is_string(), "{context}");
                assert!(error["fbtrace_id"].is_string(), "{context}");
                let (status, code) = match refusal {
                    WrongToken => (401, 190),
                    NotAdmin => (403, 10),
                    UnknownSession | UnknownGroup => (404, 100),
                    Disconnected => (503, 2),
                    Throttled => (429, 130429),
                };
                assert_eq!(error["code"], code, "{context}");
                status
            }
            (Provider::Evolution, _) => {
                let messages = body["response"]["message"].to_string();
                let (status, needle) = match refusal {
                    WrongToken => (401, "Unauthorized"),
                    NotAdmin => (404, "Error: not-authorized"),
                    UnknownSession => (404, "instance does not exist"),
                    UnknownGroup => (404, "Error: item-not-found"),
                    Disconnected => (404, "Error: Connection Closed"),
                    Throttled => (429, "Too Many Requests"),
                };
                assert_eq!(body["status"], status, "{context}");
                assert!(messages.contains(needle), "{context}");
                status
            }
        };
        assert_eq!(status.as_u16(), expected, "{context}");
    }

    /// The operation used for refusal tests: a reset, which every provider offers.
    pub(crate) async fn refused(
        self,
        sim: &Sim,
        refusal: Refusal,
        session: &str,
        group: &str,
        token: &str,
    ) -> (StatusCode, Option<String>) {
        let request = self.request(sim, Op::Reset, session, group, Some(token));
        let (status, retry_after, body) = sim.send(request).await;
        self.assert_refused(refusal, status, &body);
        (status, retry_after)
    }
}

/// Asserts that `body` is an object with exactly these fields.
fn assert_fields(body: &Value, fields: &[&str]) {
    let mut have: Vec<&str> = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"))
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = fields.to_vec();
    have.sort_unstable();
    want.sort_unstable();
    assert_eq!(have, want, "{body}");
}
