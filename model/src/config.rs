//! The engine's TOML configuration (`movewatch serve --config FILE`).
//! Every key has the contract's default, so an empty file is a valid config.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::derived::NotificationKind;
use crate::ids::{SiteId, SupplierId, VehicleId};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[http]`
    pub http: HttpConfig,
    /// `[mqtt]`
    pub mqtt: MqttConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[sites]`
    pub sites: SitesConfig,
    /// `[ingest]`: movewatch's own tuning, not in the contract.
    pub ingest: IngestConfig,
    /// `[[suppliers]]`
    pub suppliers: Vec<SupplierConfig>,
    /// `[fleet]`: the vehicle register's files and its mode.
    pub fleet: FleetConfig,
    /// `[[vehicles]]`: register entries in the config itself.
    pub vehicles: Vec<VehicleConfig>,
    /// `[[tokens]]`
    pub tokens: Vec<TokenConfig>,
    /// `[[webhooks]]`: notifications out.
    pub webhooks: Vec<WebhookConfig>,
    /// `[webhook_delivery]`: movewatch's own tuning of webhook delivery, not in the contract.
    pub webhook_delivery: WebhookDeliveryConfig,
    /// `[engine]`: how the engine spreads its work, not in the contract.
    pub engine: EngineSection,
    /// `[cluster]`: this engine node among others ("Past one machine").
    pub cluster: ClusterConfig,
}

/// `[cluster]`: the node's name, the RabbitMQ cluster, the partition count.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique per engine node.
    pub node: String,
    /// The RabbitMQ cluster (`amqp://…`); absent: one node, no cluster.
    pub amqp_url: Option<String>,
    /// Vehicles are hashed onto this many partitions; absent: `[engine] partitions`.
    pub partitions: Option<usize>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node: "n1".into(),
            amqp_url: None,
            partitions: None,
        }
    }
}

/// `[engine]`: vehicles are hashed onto `partitions`, each with its own task.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// How many partitions; 0 (the default): one per core.
    pub partitions: usize,
}

/// `[http]`: the HTTP and WebSocket listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `[mqtt]`: the embedded broker, or an external one when `url` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Where the embedded broker listens.
    pub listen: SocketAddr,
    /// `mqtt://host:port` of an external broker; the embedded one is not started.
    pub url: Option<String>,
    /// The engine's MQTT client id (fixed, so its persistent session survives restarts).
    pub client_id: String,
    /// Username and password the engine uses on an external broker, if it needs them.
    pub username: Option<String>,
    /// See `username`.
    pub password: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            url: None,
            client_id: "movewatch-engine".into(),
            username: None,
            password: None,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://path` (embedded) or `postgres://user@host/db`.
    pub url: String,
    /// Keep positions this many days; older ones are dropped (whole
    /// partitions on PostgreSQL). Unset keeps everything.
    pub retention_days: Option<u32>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "sqlite://data/movewatch.db".into(),
            retention_days: None,
        }
    }
}

/// `[sites]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SitesConfig {
    /// CSV and GeoJSON files, read in order.
    pub files: Vec<PathBuf>,
}

impl Default for SitesConfig {
    fn default() -> Self {
        SitesConfig {
            files: vec![PathBuf::from("data/sites.csv")],
        }
    }
}

/// `[ingest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// A fix with a larger hdop is stored but flagged and not used live.
    pub max_hdop: f64,
    /// A fix implying a faster speed from the previous one is flagged (km/h).
    pub max_implied_speed_kmh: f64,
    /// `POST /tracks` requests each supplier may make per minute (a token
    /// bucket refilled at this rate); past it the reply is 429 with
    /// `Retry-After`. 0 turns the limit off.
    pub tracks_per_minute: u32,
    /// How many `POST /tracks` requests a supplier may make at once before
    /// the per-minute rate applies (the bucket's size).
    pub tracks_burst: u32,
    /// How long a graceful shutdown (SIGTERM, Ctrl-C) may take to drain the
    /// pipeline, commit and acknowledge before the engine exits anyway.
    pub shutdown_timeout_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_hdop: 10.0,
            max_implied_speed_kmh: 300.0,
            tracks_per_minute: 600,
            tracks_burst: 120,
            shutdown_timeout_secs: 10,
        }
    }
}

/// `[fleet]`: which supplier runs which vehicle (with `[[vehicles]]` and
/// `PUT /api/vehicles/{vehicle}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// CSV files with `registration,supplier` columns (read by header name).
    pub files: Vec<PathBuf>,
    /// Development and demos only: a first report for a vehicle in no
    /// register entry claims it for the reporting supplier (and the claim is
    /// stored). Off (strict): such a report is rejected `unknown_vehicle`.
    pub claim_on_first_report: bool,
}

/// `[[vehicles]]`: one register entry.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VehicleConfig {
    /// The vehicle (normalised: upper case, no spaces).
    pub registration: VehicleId,
    /// The supplier that runs it.
    pub supplier: SupplierId,
}

/// `[[suppliers]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplierConfig {
    /// The supplier id, as in topics.
    pub id: SupplierId,
    /// Key for `POST /tracks` (`X-API-Key`).
    pub api_key: Option<String>,
    /// Password on the embedded broker (username = `id`).
    pub mqtt_password: Option<String>,
}

impl fmt::Debug for SupplierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupplierConfig")
            .field("id", &self.id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "mqtt_password",
                &self.mqtt_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A role a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Every channel.
    ControlRoom,
    /// Only its own sites' boards.
    Site,
    /// Its own vehicles.
    Supplier,
}

/// `[[tokens]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token. Never logged.
    pub token: String,
    /// `control_room`, `site` or `supplier`.
    pub role: RoleName,
    /// For `site`: the sites it may see.
    #[serde(default)]
    pub sites: Vec<SiteId>,
    /// For `supplier`: which supplier.
    #[serde(default)]
    pub supplier: Option<SupplierId>,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("sites", &self.sites)
            .field("supplier", &self.supplier)
            .finish()
    }
}

/// `[[webhooks]]`: where notifications go, and which.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` address the notifications are POSTed to.
    /// It also names the webhook in the store's outbox.
    pub url: String,
    /// Which notifications (`arrival`, `departure`, `arriving_30`, `alert`);
    /// every kind when absent.
    #[serde(default = "all_kinds", deserialize_with = "notification_kinds")]
    pub events: Vec<NotificationKind>,
    /// Only moves to or from these sites (empty: no filter). A notification
    /// of no move passes only webhooks without this filter.
    #[serde(default)]
    pub sites: Vec<SiteId>,
    /// Signs each body: `X-Movewatch-Signature: sha256=<hex HMAC-SHA256>`. Never logged.
    #[serde(default)]
    pub secret: Option<String>,
}

impl WebhookConfig {
    /// Whether this webhook takes `n` (its `events` and `sites` filters).
    pub fn wants(&self, n: &crate::derived::Notification) -> bool {
        self.events.contains(&n.kind)
            && (self.sites.is_empty() || n.sites.iter().any(|s| self.sites.contains(s)))
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("sites", &self.sites)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn all_kinds() -> Vec<NotificationKind> {
    NotificationKind::ALL.to_vec()
}

fn notification_kinds<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<NotificationKind>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|name| {
            NotificationKind::parse(name).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown webhook event {name:?}: expected some of arrival, departure, arriving_30, alert"
                ))
            })
        })
        .collect()
}

/// `[webhook_delivery]`: how webhooks are delivered (movewatch's own tuning).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookDeliveryConfig {
    /// A request that has not answered in this many seconds failed.
    pub timeout_secs: u64,
    /// The wait before the first retry, milliseconds; it doubles each time.
    pub first_retry_ms: u64,
    /// The longest wait between retries, seconds.
    pub max_retry_secs: u64,
    /// A notification still undelivered this many hours after it was queued
    /// is kept as failed (and logged) instead of retried.
    pub give_up_hours: u64,
    /// Requests in flight at once (over all webhooks and moves).
    pub concurrency: usize,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        WebhookDeliveryConfig {
            timeout_secs: 10,
            first_retry_ms: 1_000,
            max_retry_secs: 600,
            give_up_hours: 24,
            concurrency: 16,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is wrong (unknown key, wrong type, bad syntax).
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The values do not fit together.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and checks TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.ingest.tracks_per_minute > 0 && self.ingest.tracks_burst == 0 {
            return invalid(
                "[ingest] tracks_burst must be at least 1 while tracks_per_minute is set".into(),
            );
        }
        let mut ids = std::collections::HashSet::new();
        for s in &self.suppliers {
            if !ids.insert(s.id) {
                return invalid(format!("supplier {} is configured twice", s.id));
            }
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return invalid(format!(
                    "tokens[{i}]: a token must be at least 8 characters"
                ));
            }
            match t.role {
                RoleName::Site if t.sites.is_empty() => {
                    return invalid(format!("tokens[{i}]: role \"site\" needs sites = [..]"));
                }
                RoleName::Supplier if t.supplier.is_none() => {
                    return invalid(format!(
                        "tokens[{i}]: role \"supplier\" needs supplier = \"..\""
                    ));
                }
                RoleName::Supplier if !self.suppliers.iter().any(|s| Some(s.id) == t.supplier) => {
                    return invalid(format!(
                        "tokens[{i}]: supplier {:?} is not in [[suppliers]]",
                        t.supplier.map(|s| s.to_string())
                    ));
                }
                _ => {}
            }
        }
        let mut urls = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let rest = w
                .url
                .strip_prefix("https://")
                .or_else(|| w.url.strip_prefix("http://"));
            match rest {
                Some(r)
                    if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                }
                _ => {
                    return invalid(format!(
                        "webhooks[{i}]: url {:?} must be an http:// or https:// address",
                        w.url
                    ));
                }
            }
            if w.events.is_empty() {
                return invalid(format!(
                    "webhooks[{i}]: events = [] sends nothing; leave it out for every event"
                ));
            }
            if !urls.insert(w.url.as_str()) {
                return invalid(format!(
                    "webhooks[{i}]: url {:?} is configured twice (it names the webhook's queue)",
                    w.url
                ));
            }
        }
        let d = &self.webhook_delivery;
        if d.timeout_secs == 0
            || d.first_retry_ms == 0
            || d.max_retry_secs == 0
            || d.concurrency == 0
        {
            return invalid(
                "[webhook_delivery] timeout_secs, first_retry_ms, max_retry_secs and concurrency must be at least 1".into(),
            );
        }
        let mut owners = std::collections::HashMap::new();
        for (i, v) in self.vehicles.iter().enumerate() {
            if !self.suppliers.is_empty() && !ids.contains(&v.supplier) {
                return invalid(format!(
                    "vehicles[{i}]: supplier {} is not in [[suppliers]]",
                    v.supplier
                ));
            }
            if let Some(before) = owners.insert(v.registration, v.supplier)
                && before != v.supplier
            {
                return invalid(format!(
                    "vehicles[{i}]: {} is registered to both {before} and {}",
                    v.registration, v.supplier
                ));
            }
        }
        if let Some(url) = &self.mqtt.url {
            parse_mqtt_url(url).map_err(ConfigError::Invalid)?;
        }
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return invalid(format!(
                "store.url {:?} must start with sqlite: or postgres://",
                self.store.url
            ));
        }
        Ok(())
    }
}

/// Splits `mqtt://host:port` (port defaults to 1883).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("mqtt url {url:?} must start with mqtt://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("mqtt url {url:?} has a bad port"))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(format!("mqtt url {url:?} has no host"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_names_every_key_and_loads() {
        let text = include_str!("../../movewatch.example.toml");
        let c = Config::from_toml(text, "movewatch.example.toml").unwrap();
        // Its shown values are the defaults.
        let d = Config::default();
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.mqtt.listen, d.mqtt.listen);
        assert_eq!(c.mqtt.client_id, d.mqtt.client_id);
        assert_eq!(c.store.url, d.store.url);
        assert_eq!(c.sites.files, d.sites.files);
        assert_eq!(
            c.ingest.shutdown_timeout_secs,
            d.ingest.shutdown_timeout_secs
        );
        assert_eq!(c.fleet.claim_on_first_report, d.fleet.claim_on_first_report);
        assert_eq!(
            c.webhook_delivery.concurrency,
            d.webhook_delivery.concurrency
        );
        // Every key of every table is in it, set or commented out.
        let keys: &[(&str, &[&str])] = &[
            ("[http]", &["listen"]),
            (
                "[mqtt]",
                &["listen", "url", "client_id", "username", "password"],
            ),
            ("[store]", &["url", "retention_days"]),
            ("[sites]", &["files"]),
            (
                "[ingest]",
                &[
                    "max_hdop",
                    "max_implied_speed_kmh",
                    "tracks_per_minute",
                    "tracks_burst",
                    "shutdown_timeout_secs",
                ],
            ),
            ("[fleet]", &["files", "claim_on_first_report"]),
            ("[engine]", &["partitions"]),
            ("[cluster]", &["node", "amqp_url", "partitions"]),
            ("[[vehicles]]", &["registration", "supplier"]),
            ("[[suppliers]]", &["id", "api_key", "mqtt_password"]),
            ("[[tokens]]", &["token", "role", "sites", "supplier"]),
            ("[[webhooks]]", &["url", "events", "sites", "secret"]),
            (
                "[webhook_delivery]",
                &[
                    "timeout_secs",
                    "first_retry_ms",
                    "max_retry_secs",
                    "give_up_hours",
                    "concurrency",
                ],
            ),
        ];
        for (table, names) in keys {
            assert!(text.contains(table), "{table} missing");
            for name in *names {
                let named = text
                    .lines()
                    .map(|l| l.trim_start_matches(['#', ' ']))
                    .any(|l| l.starts_with(&format!("{name} =")));
                assert!(named, "{table} {name} missing");
            }
        }
    }

    #[test]
    fn empty_config_has_contract_defaults() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert!(c.mqtt.url.is_none());
        assert_eq!(c.store.url, "sqlite://data/movewatch.db");
        assert_eq!(c.sites.files, vec![PathBuf::from("data/sites.csv")]);
    }

    #[test]
    fn contract_example_parses() {
        let text = r#"
[http]
listen = "127.0.0.1:8080"
[mqtt]
listen = "127.0.0.1:1883"
# url = "mqtt://127.0.0.1:1883"
[store]
url = "sqlite://data/movewatch.db"
[sites]
files = ["data/sites.csv"]
[[suppliers]]
id = "geoamey"
api_key = "key-geoamey"
mqtt_password = "pw"
[[tokens]]
token = "control-room-token"
role = "control_room"
[[tokens]]
token = "site-token-lei"
role = "site"
sites = ["LEI"]
[[tokens]]
token = "supplier-token"
role = "supplier"
supplier = "geoamey"
"#;
        let c = Config::from_toml(text, "t").unwrap();
        assert_eq!(c.tokens.len(), 3);
        assert_eq!(c.tokens[1].sites[0].as_str(), "LEI");
        assert!(
            !format!("{c:?}").contains("site-token-lei"),
            "tokens must never be printed"
        );
    }

    #[test]
    fn webhooks_parse_and_check() {
        let c = Config::from_toml(
            "[[webhooks]]\nurl = \"http://127.0.0.1:9000/hook\"\n[[webhooks]]\nurl = \"https://x.example/h\"\nevents = [\"arrival\", \"arriving_30\"]\nsites = [\"LEI\"]\nsecret = \"s3cret-value\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.webhooks[0].events, NotificationKind::ALL.to_vec());
        assert!(c.webhooks[0].sites.is_empty());
        assert_eq!(
            c.webhooks[1].events,
            vec![NotificationKind::Arrival, NotificationKind::Arriving30]
        );
        assert!(
            !format!("{c:?}").contains("s3cret-value"),
            "secrets are redacted"
        );
        let e = Config::from_toml(
            "[[webhooks]]\nurl = \"http://h/\"\nevents = [\"arrivals\"]\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown webhook event \"arrivals\""), "{e}");
        for bad in ["ftp://h/x", "http://", "127.0.0.1:9000/hook", "http:// x"] {
            let e = Config::from_toml(&format!("[[webhooks]]\nurl = {bad:?}\n"), "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains("must be an http:// or https://"), "{bad}: {e}");
        }
        let twice = "[[webhooks]]\nurl = \"http://h/a\"\n[[webhooks]]\nurl = \"http://h/a\"\n";
        assert!(
            Config::from_toml(twice, "t")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn the_vehicle_register_is_strict_by_default_and_checked() {
        let c = Config::from_toml("", "t").unwrap();
        assert!(!c.fleet.claim_on_first_report, "strict by default");
        let text = r#"
[fleet]
files = ["fleet.csv"]
claim_on_first_report = true
[[suppliers]]
id = "geoamey"
[[vehicles]]
registration = "ab12 cde"
supplier = "geoamey"
"#;
        let c = Config::from_toml(text, "t").unwrap();
        assert_eq!(c.vehicles[0].registration.as_str(), "AB12CDE");
        assert!(c.fleet.claim_on_first_report);
        let unknown = text.replace("supplier = \"geoamey\"", "supplier = \"serco\"");
        let e = Config::from_toml(&unknown, "t").unwrap_err().to_string();
        assert!(e.contains("vehicles[0]") && e.contains("serco"), "{e}");
        let twice = format!(
            "{text}[[vehicles]]\nregistration = \"AB12CDE\"\nsupplier = \"other\"\n[[suppliers]]\nid = \"other\"\n"
        );
        let e = Config::from_toml(&twice, "t").unwrap_err().to_string();
        assert!(e.contains("both"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            Config::from_toml("[http]\nlisten = 5", "t")
                .unwrap_err()
                .to_string()
                .contains("listen")
        );
        assert!(
            Config::from_toml("[htp]\n", "t")
                .unwrap_err()
                .to_string()
                .contains("htp")
        );
        let e = Config::from_toml("[[tokens]]\ntoken=\"abcdefgh\"\nrole=\"site\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs sites"), "{e}");
        assert!(Config::from_toml("[mqtt]\nurl=\"http://x\"", "t").is_err());
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
    }
}
