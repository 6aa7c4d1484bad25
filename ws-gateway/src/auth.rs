//! Tokens and what they may see. Tokens are compared in constant time and never logged.

use std::borrow::Cow;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use model::config::{RoleName, TokenConfig};
use model::wire::Channel;
use model::{SiteId, SupplierId};
use subtle::ConstantTimeEq;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every channel and route.
    ControlRoom,
    /// Only these sites' boards.
    Site(Vec<SiteId>),
    /// Only this supplier's vehicles.
    Supplier(SupplierId),
}

/// A handler taking an `Access` gets the request's token checked first: a
/// missing or unknown token is answered 401 before the handler runs.
impl axum::extract::FromRequestParts<crate::Gateway> for Access {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        gateway: &crate::Gateway,
    ) -> Result<Self, Self::Rejection> {
        gateway.auth.from_request(&parts.headers, parts.uri.query())
    }
}

impl Access {
    /// Whether a site (its fence, its board) is within scope.
    pub fn may_see_site(&self, site: &SiteId) -> bool {
        match self {
            Access::ControlRoom | Access::Supplier(_) => true,
            Access::Site(sites) => sites.contains(site),
        }
    }

    /// Whether the token may subscribe to a channel at all (per-vehicle
    /// visibility within a channel is decided per frame).
    pub fn may_subscribe(&self, channel: &Channel) -> bool {
        match (self, channel) {
            (Access::ControlRoom, _) => true,
            (Access::Site(sites), Channel::Site(id)) => sites.contains(id),
            (Access::Site(_), _) => false,
            // Suppliers see their own vehicles only; the fleet and site channels carry others'.
            (Access::Supplier(_), Channel::Vehicle(_)) => true,
            (Access::Supplier(_), _) => false,
        }
    }
}

/// The WebSocket subprotocol the pages ask for (and the server selects);
/// the token travels beside it as `movewatch.token.<hex>`.
pub const PAGE_PROTOCOL: &str = "movewatch.v1";
const TOKEN_PROTOCOL_PREFIX: &str = "movewatch.token.";

/// Lower- or upper-case hex of UTF-8 text.
fn decode_hex(hex: &str) -> Option<String> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The configured tokens.
pub struct Auth {
    tokens: Vec<(Vec<u8>, Access)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} tokens)", self.tokens.len())
    }
}

impl Auth {
    /// From the `[[tokens]]` of the config (already validated).
    pub fn from_config(tokens: &[TokenConfig]) -> Self {
        let tokens = tokens
            .iter()
            .filter_map(|t| {
                let access = match t.role {
                    RoleName::ControlRoom => Access::ControlRoom,
                    RoleName::Site => Access::Site(t.sites.clone()),
                    RoleName::Supplier => Access::Supplier(t.supplier?),
                };
                Some((t.token.as_bytes().to_vec(), access))
            })
            .collect();
        Auth { tokens }
    }

    /// The access a token grants, comparing against every token in constant time.
    pub fn check(&self, token: &str) -> Option<Access> {
        let mut found = None;
        for (known, access) in &self.tokens {
            if bool::from(known.as_slice().ct_eq(token.as_bytes())) {
                found = Some(access.clone());
            }
        }
        found
    }

    /// The token of a request: `Authorization: Bearer`, a WebSocket
    /// subprotocol `movewatch.token.<hex of the token's UTF-8>` (how the pages
    /// authenticate their WebSocket without putting the token in its URL), or
    /// `?token=` (percent-decoded).
    pub fn token_of<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<Cow<'a, str>> {
        if let Some(bearer) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return Some(Cow::Borrowed(bearer.trim()));
        }
        if let Some(token) = headers
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL_PREFIX))
            .and_then(decode_hex)
        {
            return Some(Cow::Owned(token));
        }
        form_urlencoded::parse(query?.as_bytes())
            .find(|(key, _)| key == "token")
            .map(|(_, value)| value)
    }

    /// The access of a request, or the 401 reply.
    #[allow(clippy::result_large_err)]
    pub fn from_request(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Access, Response> {
        let Some(token) = Self::token_of(headers, query) else {
            return Err(crate::error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a token is required (Authorization: Bearer or ?token=)",
            ));
        };
        self.check(&token)
            .ok_or_else(|| crate::error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_header_or_the_decoded_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            Auth::token_of(&headers, Some("a=1&token=ab%2Bc%2Fd")).as_deref(),
            Some("ab+c/d")
        );
        assert_eq!(Auth::token_of(&headers, Some("a=1")), None);
        let mut ws = HeaderMap::new();
        // "ab+c" as hex, beside the page protocol.
        ws.insert(
            "sec-websocket-protocol",
            "movewatch.v1, movewatch.token.61622b63".parse().unwrap(),
        );
        assert_eq!(Auth::token_of(&ws, None).as_deref(), Some("ab+c"));
        ws.insert(
            "sec-websocket-protocol",
            "movewatch.v1, movewatch.token.6".parse().unwrap(),
        );
        assert_eq!(Auth::token_of(&ws, None), None);
        headers.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(
            Auth::token_of(&headers, Some("token=other")).as_deref(),
            Some("xyz")
        );
    }

    #[test]
    fn scopes() {
        let token = |role, sites: &[&str], supplier: Option<&str>| TokenConfig {
            token: format!("token-{role:?}"),
            role,
            sites: sites.iter().map(|s| s.parse().unwrap()).collect(),
            supplier: supplier.map(|s| s.parse().unwrap()),
        };
        let auth = Auth::from_config(&[
            token(RoleName::ControlRoom, &[], None),
            token(RoleName::Site, &["LEI"], None),
            token(RoleName::Supplier, &[], Some("serco")),
        ]);
        let site = auth.check("token-Site").unwrap();
        assert!(site.may_subscribe(&Channel::parse("site:LEI").unwrap()));
        assert!(!site.may_subscribe(&Channel::parse("site:WDI").unwrap()));
        assert!(!site.may_subscribe(&Channel::Fleet));
        assert!(!site.may_subscribe(&Channel::parse("vehicle:AB12CDE").unwrap()));
        let control = auth.check("token-ControlRoom").unwrap();
        assert!(control.may_subscribe(&Channel::Fleet));
        let supplier = auth.check("token-Supplier").unwrap();
        assert!(!supplier.may_subscribe(&Channel::Fleet));
        assert!(auth.check("token-Nobody").is_none());
    }
}
