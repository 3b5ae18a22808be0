//! `[admin]`: the admin API and web console's listener (off by default) and the bearer
//! tokens it accepts, each with a name (recorded with every change it makes) and a role.

use serde::{Deserialize, Serialize};

use super::Secret;

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// IP address and port of the admin listener; empty: no admin API, no console.
    pub listen: String,
    /// Mark the console's session cookie `Secure` (set it when the console is reached
    /// over HTTPS, through a TLS-terminating proxy).
    pub secure_cookie: bool,
    pub tokens: Vec<AdminToken>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads links (codes as fingerprints), history, dead letters, pauses, the summary.
    Viewer,
    /// Everything a viewer does, full links, and sends, replays, pauses and resumes.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Who holds it: recorded with every change made with it (`admin:<name>`).
    pub name: String,
    pub role: Role,
    /// The token, or after loading the one `token_env` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl AdminSettings {
    /// Fills in each token from the variable its `token_env` names, as (key, problem).
    pub(super) fn resolve(&mut self, env: &[(String, String)]) -> Result<(), String> {
        for (i, t) in self.tokens.iter_mut().enumerate() {
            if t.token.is_none()
                && let Some(var) = &t.token_env
            {
                match env.iter().find(|(k, _)| k == var) {
                    Some((_, v)) if !v.is_empty() => t.token = Some(Secret::new(v.clone())),
                    _ => {
                        return Err(format!(
                            "admin.tokens[{i}].token_env: environment variable {var} is not set"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The rules serde cannot express, as (key, problem).
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let problem = |key: String, p: &str| Err((key, p.to_owned()));
        if self.listen.is_empty() {
            return Ok(());
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return problem(
                "admin.listen".into(),
                "must be an IP address and port like \"127.0.0.1:9465\", or \"\" to disable",
            );
        }
        if self.tokens.is_empty() {
            return problem(
                "admin.tokens".into(),
                "at least one token is needed when admin.listen is set",
            );
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |k: &str| format!("admin.tokens[{i}].{k}");
            if t.name.is_empty()
                || t.name.len() > 64
                || !t
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                return problem(key("name"), "must be 1..=64 of A-Za-z0-9_-");
            }
            if self.tokens[..i].iter().any(|o| o.name == t.name) {
                return problem(key("name"), "names must be unique");
            }
            match &t.token {
                None => return problem(key("token"), "missing (set token or token_env)"),
                Some(s) if s.expose().chars().count() < MIN_TOKEN_CHARS => {
                    return problem(key("token"), "must be at least 16 characters");
                }
                Some(s) if self.tokens[..i].iter().any(|o| o.token.as_ref() == Some(s)) => {
                    return problem(key("token"), "each token must be different");
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
