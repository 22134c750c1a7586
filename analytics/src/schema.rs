//! The columnar form of [`Event`]: one Arrow schema, defined once, and the
//! builder that turns events into record batches of it.
//!
//! The column list below is the only definition: the schema, the builder and
//! the README's table all follow it. Columns are only ever added at the end
//! (with a new [`SCHEMA_VERSION`]), never renamed or retyped, so files
//! written by older gateways stay queryable beside newer ones.
//!
//! Types are chosen for every SQL engine the logs are meant for: signed
//! integers only (Spark, Trino and Athena have no unsigned types), times as
//! `TIMESTAMP WITH TIME ZONE` in microseconds, low-cardinality strings as
//! dictionaries, addresses as their canonical text (`'203.0.113.7'`,
//! `'2001:db8::1'`), which every engine compares, groups and `LIKE`s.

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, LazyLock},
};

use arrow::{
    array::{
        ArrayBuilder as _, ArrayRef, DictionaryArray, Int32Array, Int32Builder, Int64Builder,
        NullBufferBuilder, RecordBatch, StringBuilder, StringDictionaryBuilder,
        TimestampMicrosecondBuilder,
    },
    datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit},
};

use crate::event::{Event, Label};

/// Version of the column list; stored in every file's metadata under
/// [`SCHEMA_VERSION_KEY`].
pub const SCHEMA_VERSION: u32 = 1;

/// Metadata key of [`SCHEMA_VERSION`] (Arrow schema and Parquet footer).
pub const SCHEMA_VERSION_KEY: &str = "gateway.audit.schema_version";

/// Name of the time column, the sort key of every file.
pub const TIME_COLUMN: &str = "event_time";

/// The time zone of [`TIME_COLUMN`].
const UTC: &str = "UTC";

/// The Arrow type of each kind of column.
macro_rules! arrow_type {
    (time) => {
        DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
    };
    (dict) => {
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    };
    (text) => {
        DataType::Utf8
    };
    (ip) => {
        DataType::Utf8
    };
    (constant) => {
        arrow_type!(dict)
    };
    (int32) => {
        DataType::Int32
    };
    (int64) => {
        DataType::Int64
    };
}

/// The builder of each kind of column.
macro_rules! builder_type {
    (time) => { TimestampMicrosecondBuilder };
    (dict) => { LabelBuilder };
    (text) => { StringBuilder };
    (ip) => { StringBuilder };
    (constant) => { StringDictionaryBuilder<Int32Type> };
    (int32) => { Int32Builder };
    (int64) => { Int64Builder };
}

/// Defines the schema, `Columns` (one builder per column) and how an event
/// fills them, from one list of `name: kind [required] = value;`, where the
/// value is an expression of the event and host names given first. A
/// `constant` column holds the same value in every row of a batch: it is
/// filled once per batch, not per event.
macro_rules! columns {
    (($event:ident, $host:ident) => { $( $(#[doc = $doc:literal])* $name:ident: $kind:ident $($required:ident)? = $value:expr; )* }) => {
        /// The column names in order (stable: these are SQL column names).
        pub const COLUMN_NAMES: &[&str] = &[$(stringify!($name)),*];

        /// (column, description) in order, for the README and `--help`.
        pub const COLUMN_DOCS: &[(&str, &str)] = &[$((stringify!($name), concat!($($doc),*))),*];

        fn fields() -> Vec<Field> {
            vec![$(
                Field::new(stringify!($name), arrow_type!($kind), columns!(@nullable $($required)?)),
            )*]
        }

        /// One builder per column.
        struct Columns {
            $($name: builder_type!($kind),)*
        }

        impl Columns {
            fn with_capacity(capacity: usize) -> Self {
                Self { $($name: columns!(@new $kind, capacity),)* }
            }

            fn push(&mut self, $event: &Event) {
                $( columns!(@append self.$name, $kind, $value); )*
            }

            fn finish(&mut self, $host: &str, rows: usize) -> Vec<ArrayRef> {
                $( columns!(@fill self.$name, $kind, $value, rows); )*
                vec![$(Arc::new(self.$name.finish()) as ArrayRef,)*]
            }
        }
    };
    (@nullable required) => { false };
    (@nullable) => { true };
    (@new time, $n:expr) => { TimestampMicrosecondBuilder::with_capacity($n).with_timezone(UTC) };
    (@new dict, $n:expr) => { LabelBuilder::with_capacity($n) };
    (@new text, $n:expr) => { StringBuilder::with_capacity($n, $n * 16) };
    (@new ip, $n:expr) => { StringBuilder::with_capacity($n, $n * 16) };
    (@new constant, $n:expr) => { StringDictionaryBuilder::<Int32Type>::with_capacity($n, 1, 64) };
    (@new int32, $n:expr) => { Int32Builder::with_capacity($n) };
    (@new int64, $n:expr) => { Int64Builder::with_capacity($n) };
    (@append $b:expr, time, $v:expr) => { $b.append_value($v) };
    (@append $b:expr, dict, $v:expr) => { $b.append_label($v) };
    (@append $b:expr, text, $v:expr) => { $b.append_option($v) };
    (@append $b:expr, ip, $v:expr) => { append_ip(&mut $b, $v) };
    (@append $b:expr, constant, $v:expr) => {};
    (@append $b:expr, int32, $v:expr) => { $b.append_option($v) };
    (@append $b:expr, int64, $v:expr) => { $b.append_option($v) };
    (@fill $b:expr, constant, $v:expr, $rows:expr) => { $b.append_values($v, $rows) };
    (@fill $b:expr, $kind:ident, $v:expr, $rows:expr) => {};
}

/// Distinct values a [`LabelBuilder`] finds by comparing with each in
/// turn; past this many it looks them up by hash.
const SCAN_LABELS: usize = 16;

/// Whether two labels are equal: labels are short, and comparing them in
/// a word or two inline is several times cheaper than calling `memcmp`.
fn same_label(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

/// The text of a label, and whether it lives as long as the process
/// ([`Label::Borrowed`]: names from the configuration, fixed words): such a
/// text is found again by its address, which no other text can ever take.
#[derive(Clone, Copy)]
struct LabelText<'a> {
    text: &'a str,
    fixed: bool,
}

impl<'a> LabelText<'a> {
    fn of(label: &'a Label) -> Self {
        Self {
            text: label,
            fixed: matches!(label, Label::Borrowed(_)),
        }
    }

    fn fixed(text: &'static str) -> Self {
        Self { text, fixed: true }
    }

    /// Where a fixed text lives; `None` for others.
    fn address(self) -> Option<(usize, usize)> {
        self.fixed
            .then_some((self.text.as_ptr() as usize, self.text.len()))
    }
}

/// Builds a dictionary column of labels: reasons, methods, names from the
/// configuration. A batch holds a handful of distinct values, and a row
/// mostly repeats the row before, so a value is first compared with the
/// previous row's, then with the few distinct values (by address when the
/// text is fixed, which most are, else by content), and hashed only when a
/// batch holds many. (Arrow's dictionary builder hashes every value; the
/// column is the same.)
struct LabelBuilder {
    keys: Vec<i32>,
    nulls: NullBufferBuilder,
    /// The distinct values in first-seen order: a value's key is its index.
    values: StringBuilder,
    /// By key, the address of a fixed text the value came from, if any.
    addresses: Vec<Option<(usize, usize)>>,
    /// Key by value, once there are more than [`SCAN_LABELS`] values.
    by_value: HashMap<Box<str>, i32>,
    /// The key of the last value appended.
    last: Option<i32>,
}

impl LabelBuilder {
    fn with_capacity(rows: usize) -> Self {
        Self {
            keys: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
            values: StringBuilder::new(),
            addresses: Vec::new(),
            by_value: HashMap::new(),
            last: None,
        }
    }

    /// The distinct value of `key`.
    fn value(&self, key: i32) -> &[u8] {
        let offsets = self.values.offsets_slice();
        let key = key as usize;
        &self.values.values_slice()[offsets[key] as usize..offsets[key + 1] as usize]
    }

    fn key(&mut self, label: LabelText) -> i32 {
        let address = label.address();
        if address.is_some() {
            let by_address = self
                .last
                .filter(|&last| self.addresses[last as usize] == address);
            let found = by_address.or_else(|| {
                (self.addresses.len() <= SCAN_LABELS)
                    .then(|| self.addresses.iter().position(|&a| a == address))
                    .flatten()
                    .map(|key| key as i32)
            });
            if let Some(key) = found {
                self.last = Some(key);
                return key;
            }
        }
        let key = self.key_by_text(label.text);
        let known = &mut self.addresses[key as usize];
        if known.is_none() {
            *known = address;
        }
        self.last = Some(key);
        key
    }

    fn key_by_text(&mut self, value: &str) -> i32 {
        if let Some(last) = self.last
            && same_label(self.value(last), value.as_bytes())
        {
            return last;
        }
        let distinct = self.values.len();
        let found = if distinct <= SCAN_LABELS {
            (0..distinct as i32).find(|&key| same_label(self.value(key), value.as_bytes()))
        } else {
            self.by_value.get(value).copied()
        };
        found.unwrap_or_else(|| {
            let key = i32::try_from(distinct).expect("fewer distinct values than rows");
            self.values.append_value(value);
            self.addresses.push(None);
            if distinct == SCAN_LABELS {
                // From now on by hash: index every value so far.
                for key in 0..=key {
                    let known = std::str::from_utf8(self.value(key)).expect("appended as str");
                    self.by_value.insert(known.into(), key);
                }
            } else if distinct > SCAN_LABELS {
                self.by_value.insert(value.into(), key);
            }
            key
        })
    }

    fn append_label(&mut self, label: Option<LabelText>) {
        match label {
            Some(label) => {
                let key = self.key(label);
                self.keys.push(key);
                self.nulls.append_non_null();
            }
            None => {
                self.keys.push(0);
                self.nulls.append_null();
            }
        }
    }

    /// The column; the builder starts over, with no values.
    fn finish(&mut self) -> DictionaryArray<Int32Type> {
        let keys = Int32Array::new(std::mem::take(&mut self.keys).into(), self.nulls.finish());
        let values = Arc::new(self.values.finish());
        self.addresses.clear();
        self.by_value.clear();
        self.last = None;
        DictionaryArray::try_new(keys, values).expect("every key is a value's index")
    }
}

fn int32(v: Option<impl Into<i64>>) -> Option<i32> {
    v.and_then(|v| i32::try_from(v.into()).ok())
}

fn int64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Appends an address as its canonical text without a temporary string:
/// IPv4 (most rows, every XDP record) by hand, IPv6 through `Display`.
fn append_ip(builder: &mut StringBuilder, ip: Option<IpAddr>) {
    match ip {
        None => builder.append_null(),
        Some(IpAddr::V4(ip)) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            builder.append_value(std::str::from_utf8(&text[..len]).expect("ASCII digits"));
        }
        Some(IpAddr::V6(ip)) => {
            write!(builder, "{ip}").expect("writing to memory");
            builder.append_value("");
        }
    }
}

columns! {
(event, host) => {
    /// When the decision was made (UTC, microseconds).
    event_time: time required = event.time_us;
    /// The machine that decided.
    host: constant required = host;
    /// `xdp` or `http`.
    layer: dict = event.layer.map(|l| LabelText::fixed(l.as_str()));
    /// `allow`, `bypass` or `deny`.
    decision: dict = event.decision.map(|d| LabelText::fixed(d.as_str()));
    /// Why, e.g. `policy`, `jwt_expired`, `dropped_not_allowed`, `audit_overflow`.
    reason: dict required = Some(LabelText::of(&event.reason));
    /// The application (HTTP).
    app: dict = event.app.as_ref().map(LabelText::of);
    /// The deciding policy.
    policy: dict = event.policy.as_ref().map(LabelText::of);
    /// Index of the include rule that matched in that policy.
    rule: int32 = int32(event.rule);
    /// Verified email of the user.
    email: text = event.email.as_deref();
    /// Verified subject of the user.
    subject: text = event.subject.as_deref();
    /// `jwt`, `cookie`, `service_token`, `gateway_session`.
    auth_method: dict = event.auth_method.as_ref().map(LabelText::of);
    /// Service-token client id (never its secret).
    token_client_id: dict = event.token_client_id.as_ref().map(LabelText::of);
    /// Service-token name.
    token_name: dict = event.token_name.as_ref().map(LabelText::of);
    /// Country of the client.
    country: dict = event.country.as_ref().map(LabelText::of);
    /// Client address as text (XDP: the dropped source; null for a sum of sources not itemized: single-packet ones, or those past the limit while the audit queue was full).
    client_ip: ip = event.client_ip;
    /// Client TCP port.
    client_port: int32 = int32(event.client_port);
    /// `HTTP/1.1`, `HTTP/2`; XDP: `tcp`, `udp`, `icmp`, ...
    protocol: dict = event.protocol.as_ref().map(LabelText::of);
    /// HTTP method.
    method: dict = event.method.as_ref().map(LabelText::of);
    /// The request's normalized host name.
    hostname: dict = event.hostname.as_ref().map(LabelText::of);
    /// The normalized path.
    path: text = event.path.as_deref();
    /// HTTP status sent.
    status: int32 = int32(event.status);
    /// Request to response headers, microseconds.
    latency_us: int64 = int64(event.latency_us);
    /// Response body bytes (HTTP) or dropped bytes (XDP).
    bytes: int64 = int64(event.bytes);
    /// Request id, also sent to the client and the upstream.
    request_id: text = event.request_id.as_deref();
    /// Issuer of the token that authenticated.
    token_issuer: dict = event.token_issuer.as_ref().map(LabelText::of);
    /// Key id that signed it.
    key_id: dict = event.key_id.as_ref().map(LabelText::of);
    /// XDP: destination port of the dropped packets.
    dst_port: int32 = int32(event.dst_port);
    /// XDP: packets in the record; `audit_overflow`: events lost.
    packets: int64 = int64(event.packets);
    /// XDP: time from the record's first packet to its last, microseconds.
    interval_us: int64 = int64(event.interval_us);
}
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let metadata = [(SCHEMA_VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string())];
    Arc::new(Schema::new_with_metadata(fields(), metadata.into()))
});

/// The audit schema.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// The SQL type a column of `data_type` has in DuckDB, Trino, Spark and
/// DataFusion alike, for documentation.
pub fn sql_type(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE",
        DataType::Dictionary(..) => "VARCHAR (dictionary)",
        DataType::Utf8 => "VARCHAR",
        DataType::Int32 => "INTEGER",
        DataType::Int64 => "BIGINT",
        DataType::Date32 => "DATE",
        _ => "other",
    }
}

/// Collects events into one record batch of [`schema`]. `host` fills the
/// `host` column of every row.
pub struct EventBatchBuilder {
    host: String,
    columns: Columns,
    rows: usize,
}

impl EventBatchBuilder {
    /// A builder for a batch of about `capacity` rows from `host`.
    pub fn new(host: &str, capacity: usize) -> Self {
        Self {
            host: host.to_owned(),
            columns: Columns::with_capacity(capacity),
            rows: 0,
        }
    }

    /// Appends one row.
    pub fn push(&mut self, event: &Event) {
        self.columns.push(event);
        self.rows += 1;
    }

    /// Rows appended so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row was appended.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The rows as a batch.
    pub fn finish(mut self) -> RecordBatch {
        let arrays = self.columns.finish(&self.host, self.rows);
        RecordBatch::try_new(schema(), arrays).expect("the builders follow the schema")
    }
}

impl std::fmt::Debug for EventBatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatchBuilder")
            .field("host", &self.host)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use arrow::{
        array::{Array, AsArray},
        datatypes::{Int32Type, TimestampMicrosecondType},
    };

    use super::*;
    use crate::event::{Decision, Layer};

    #[test]
    fn every_event_field_has_a_column_in_order_and_the_docs_match() {
        let schema = schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, COLUMN_NAMES);
        assert_eq!(COLUMN_DOCS.len(), COLUMN_NAMES.len());
        assert!(COLUMN_DOCS.iter().all(|(_, doc)| !doc.trim().is_empty()));
        assert_eq!(
            schema.metadata()[SCHEMA_VERSION_KEY],
            SCHEMA_VERSION.to_string()
        );
        // Every Event field reaches a column: the serialized field names
        // (which the JSON-lines log uses) are the columns bar `host` and the
        // time, which is `event_time` in tables.
        let json = serde_json::to_value(Event::default()).unwrap();
        for key in json.as_object().unwrap().keys() {
            let column = if key == "time_us" { TIME_COLUMN } else { key };
            assert!(names.contains(&column), "no column for Event::{key}");
        }
        assert!(schema.fields().iter().all(|f| !matches!(
            f.data_type(),
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
        )));
    }

    #[test]
    fn the_readme_documents_every_column() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = readme
            .split("### Schema (version ")
            .nth(1)
            .expect("a schema section");
        assert!(table.starts_with(&format!("{SCHEMA_VERSION})")));
        let table = table.split("\n\n").find(|p| p.starts_with('|')).unwrap();
        for name in COLUMN_NAMES {
            assert!(
                table.contains(&format!("`{name}`")),
                "README: no row for {name}"
            );
        }
    }

    #[test]
    fn addresses_are_written_as_their_canonical_text() {
        let mut addresses: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.100",
            "192.0.2.9",
            "198.51.100.10",
            "203.0.113.199",
            "2001:db8::1",
            "::ffff:192.0.2.1",
            "::",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        addresses.extend((0..=255).map(|o| IpAddr::from([o, 255 - o, o / 7, o % 10])));
        let mut builder = StringBuilder::new();
        for ip in &addresses {
            append_ip(&mut builder, Some(*ip));
        }
        append_ip(&mut builder, None);
        let column = builder.finish();
        for (row, ip) in addresses.iter().enumerate() {
            assert_eq!(column.value(row), ip.to_string());
        }
        assert!(column.is_null(addresses.len()));
    }

    #[test]
    fn events_become_rows_with_nulls_for_what_does_not_apply() {
        let mut builder = EventBatchBuilder::new("origin-1", 4);
        builder.push(&Event {
            time_us: 1_700_000_000_123_456,
            layer: Some(Layer::Http),
            decision: Some(Decision::Allow),
            reason: "policy".into(),
            app: Some("wiki".into()),
            email: Some("a@example.com".into()),
            client_ip: Some("2001:db8::7".parse::<IpAddr>().unwrap()),
            status: Some(200),
            latency_us: Some(u64::MAX),
            ..Event::default()
        });
        builder.push(&Event {
            time_us: 1_700_000_001_000_000,
            layer: Some(Layer::Xdp),
            decision: Some(Decision::Deny),
            reason: "dropped_not_allowed".into(),
            client_ip: Some("203.0.113.9".parse::<IpAddr>().unwrap()),
            dst_port: Some(443),
            packets: Some(12),
            ..Event::default()
        });
        assert_eq!(builder.len(), 2);
        let batch = builder.finish();
        assert_eq!(batch.num_rows(), 2);
        let time = batch
            .column_by_name(TIME_COLUMN)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!(time.value(0), 1_700_000_000_123_456);
        let dict = |name: &str, row: usize| {
            let column = batch
                .column_by_name(name)
                .unwrap()
                .as_dictionary::<Int32Type>();
            let values = column.values().as_string::<i32>();
            column
                .is_valid(row)
                .then(|| values.value(column.keys().value(row) as usize).to_owned())
        };
        assert_eq!(dict("host", 1).as_deref(), Some("origin-1"));
        assert_eq!(dict("layer", 1).as_deref(), Some("xdp"));
        assert_eq!(dict("app", 1), None);
        let ip = batch
            .column_by_name("client_ip")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(ip.value(0), "2001:db8::7");
        assert_eq!(ip.value(1), "203.0.113.9");
        let latency = batch
            .column_by_name("latency_us")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(latency.value(0), i64::MAX, "saturates instead of wrapping");
        assert!(latency.is_null(1));
    }

    #[test]
    fn labels_keep_their_values_and_nulls_past_the_scan_limit() {
        // Runs of repeats, values seen again after others, nulls, and more
        // distinct values than are found by scanning; the same text fixed
        // (at one of two addresses) or copied.
        let fixed: Vec<&'static str> = (0..3 * SCAN_LABELS)
            .map(|n| &*format!("app-{n}").leak())
            .collect();
        let twins: Vec<&'static str> = (0..3 * SCAN_LABELS)
            .map(|n| &*format!("app-{n}").leak())
            .collect();
        let values: Vec<Option<Label>> = (0..500)
            .map(|i: usize| {
                let n = match i % 7 {
                    0 => return None,
                    1 | 2 => i / 50,
                    _ => (i * 31) % (3 * SCAN_LABELS),
                };
                Some(match i % 3 {
                    0 => Label::Borrowed(fixed[n]),
                    1 => Label::Borrowed(twins[n]),
                    _ => Label::Owned(format!("app-{n}")),
                })
            })
            .collect();
        let mut builder = LabelBuilder::with_capacity(4);
        for _ in 0..2 {
            for value in &values {
                builder.append_label(value.as_ref().map(LabelText::of));
            }
            let column = builder.finish();
            let decoded: Vec<Option<&str>> = column
                .downcast_dict::<arrow::array::StringArray>()
                .unwrap()
                .into_iter()
                .collect();
            let expected: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
            assert_eq!(decoded, expected);
            let distinct: std::collections::HashSet<&str> =
                values.iter().flatten().map(|label| &**label).collect();
            assert_eq!(column.values().len(), distinct.len(), "each value once");
        }
        assert!(builder.finish().is_empty(), "finish starts over");
    }

    #[test]
    fn labels_differing_in_any_byte_are_not_the_same() {
        for len in 0..=24 {
            let label: Vec<u8> = (0..len as u8).map(|i| b'a' + i % 26).collect();
            assert!(same_label(&label, &label.clone()));
            for at in 0..len {
                let mut other = label.clone();
                other[at] ^= 1;
                assert!(!same_label(&label, &other), "len {len}, byte {at}");
            }
            assert!(!same_label(&label, &label[..len.saturating_sub(1)]) || len == 0);
        }
    }
}
