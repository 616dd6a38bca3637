//! Bearer tokens with roles and scopes.
//!
//! Secrets are never stored: the store keeps each token's SHA-256, and a presented token is
//! hashed and compared in constant time. While no active token exists, every caller is the
//! `anonymous` admin; that mode is only allowed on loopback (see `serve`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use levee_engine::MachineRecord;
use levee_store::{DynStore, TokenRecord};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::SharedApp;
use crate::error::ApiError;

/// Every token secret starts with this, so leaked tokens are easy to grep for.
pub const TOKEN_PREFIX: &str = "lvt_";
/// Random bytes in a token secret.
pub const TOKEN_SECRET_BYTES: usize = 32;
/// Name the audit log and history give callers when authentication is off.
pub const ANONYMOUS: &str = "anonymous";
/// The cookie the web UI's sign-in stores the token secret in (HttpOnly, SameSite=Strict).
pub const UI_COOKIE: &str = "levee_token";
/// The header the web UI's script sets on every API call; required with the cookie for any
/// request that changes something.
pub const UI_REQUEST_HEADER: &str = "x-levee-ui";

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything it is scoped to.
    Viewer,
    /// Also reports steps, replays machines and applies definitions.
    Operator,
    /// Also manages tokens.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use viewer, operator or admin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Which machines a token may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Machine(String),
    Group(String),
}

impl Scope {
    /// Parses `machine:ID` or `group:NAME`; `None` is every machine.
    pub fn parse(text: Option<&str>) -> Result<Scope, String> {
        let Some(text) = text else {
            return Ok(Scope::All);
        };
        match text.split_once(':') {
            Some(("machine", id)) if !id.is_empty() => Ok(Scope::Machine(id.to_string())),
            Some(("group", name)) if !name.is_empty() => Ok(Scope::Group(name.to_string())),
            _ => Err(format!(
                "invalid scope `{text}`: use `machine:ID` or `group:NAME`"
            )),
        }
    }

    pub fn allows(&self, machine: &MachineRecord) -> bool {
        match self {
            Scope::All => true,
            Scope::Machine(id) => *id == machine.id,
            Scope::Group(group) => machine.group.as_deref() == Some(group.as_str()),
        }
    }
}

/// Who is making a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub remote: Option<SocketAddr>,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                role.as_str()
            )))
        }
    }

    /// Fails unless the token is unscoped (creating machines, applying definitions).
    pub fn require_unscoped(&self) -> Result<(), ApiError> {
        match self.scope {
            Scope::All => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "token `{}` is scoped to some machines; this needs an unscoped token",
                self.name
            ))),
        }
    }

    pub fn require_machine(&self, machine: &MachineRecord) -> Result<(), ApiError> {
        if self.scope.allows(machine) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "token `{}` may not touch machine `{}`",
                self.name, machine.id
            )))
        }
    }
}

/// A fresh token secret.
pub fn new_secret() -> String {
    let mut bytes = [0u8; TOKEN_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The active tokens, kept in memory and refreshed from the store, so checking a request
/// costs a hash and a map lookup.
#[derive(Default)]
pub struct Auth {
    by_hash: RwLock<HashMap<String, TokenRecord>>,
    required: AtomicBool,
    /// Bumped by every local create or revoke, so a refresh that read the store before one
    /// of them does not overwrite it with what it read.
    generation: AtomicU64,
}

impl Auth {
    pub async fn load(store: &DynStore) -> Result<Auth, levee_store::Error> {
        let auth = Auth::default();
        auth.refresh(store).await?;
        Ok(auth)
    }

    /// Reloads the active tokens (tokens created or revoked by the CLI or another replica).
    ///
    /// Authentication is required as soon as any token was ever created, revoked or not:
    /// revoking the last token must lock the server, never open it to everyone.
    pub async fn refresh(&self, store: &DynStore) -> Result<(), levee_store::Error> {
        let generation = self.generation.load(Ordering::SeqCst);
        let tokens = store.tokens().await?;
        let any = !tokens.is_empty();
        let active: HashMap<String, TokenRecord> = tokens
            .into_iter()
            .filter(|t| t.revoked_at_ms.is_none())
            .map(|t| (t.hash.clone(), t))
            .collect();
        let mut map = self.by_hash.write().expect("auth lock");
        if self.generation.load(Ordering::SeqCst) != generation {
            return Ok(()); // A local change raced this read; the next refresh sees both.
        }
        if any {
            self.required.store(true, Ordering::SeqCst);
        }
        *map = active;
        Ok(())
    }

    /// Whether requests must carry a token (true once any token has been created).
    pub fn required(&self) -> bool {
        self.required.load(Ordering::Relaxed)
    }

    pub fn remember(&self, token: TokenRecord) {
        let mut map = self.by_hash.write().expect("auth lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.insert(token.hash.clone(), token);
        self.required.store(true, Ordering::SeqCst);
    }

    pub fn forget(&self, name: &str) {
        let mut map = self.by_hash.write().expect("auth lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.retain(|_, t| t.name != name);
    }

    /// The caller a request's `Authorization` header names.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        remote: Option<SocketAddr>,
    ) -> Result<Caller, ApiError> {
        if !self.required() {
            return Ok(Caller {
                name: ANONYMOUS.to_string(),
                role: Role::Admin,
                scope: Scope::All,
                remote,
            });
        }
        let secret = header
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let hash = hash_secret(secret);
        let map = self.by_hash.read().expect("auth lock");
        let token = map
            .get(&hash)
            .filter(|t| bool::from(t.hash.as_bytes().ct_eq(hash.as_bytes())))
            .ok_or_else(|| {
                ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "unknown or revoked token",
                )
            })?;
        let role = Role::parse(&token.role).map_err(ApiError::internal)?;
        let scope = Scope::parse(token.scope.as_deref()).map_err(ApiError::internal)?;
        Ok(Caller {
            name: token.name.clone(),
            role,
            scope,
            remote,
        })
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// The bearer a request presents: its `Authorization` header, or else the web UI's sign-in
/// cookie. Browsers send cookies with every request, so a cookie counts for a request that
/// changes something only when it also carries [`UI_REQUEST_HEADER`], which a page of another
/// site cannot add without a CORS preflight that Levee never grants.
fn presented_bearer(parts: &Parts) -> Result<Option<String>, ApiError> {
    if let Some(header) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Ok(Some(header.to_string()));
    }
    let Some(secret) = cookie(&parts.headers, UI_COOKIE).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let safe = parts.method.is_safe();
    if !safe && !parts.headers.contains_key(UI_REQUEST_HEADER) {
        return Err(ApiError::forbidden(format!(
            "a request that signs in with the web UI's cookie and changes something must carry \
             the `{UI_REQUEST_HEADER}` header (protection against cross-site requests)"
        )));
    }
    Ok(Some(format!("Bearer {secret}")))
}

impl FromRequestParts<SharedApp> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &SharedApp,
    ) -> Result<Self, Self::Rejection> {
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        if !app.auth.required() {
            return app.auth.authenticate(None, remote);
        }
        let bearer = presented_bearer(parts)?;
        app.auth.authenticate(bearer.as_deref(), remote)
    }
}
