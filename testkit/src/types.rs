//! CQL data types: parsing type names, the protocol's type options,
//! validating and comparing serialized values, and turning literals into
//! serialized values.
//!
//! One file on purpose (about 950 lines of code, then its tests): every
//! part of it (collection encoding, literal encoding, date and UUID text)
//! is keyed on [`CqlType`], and keeping them together keeps each type's
//! rules in one place. If it grows, literal encoding (`encode_literal` and
//! the text parsers under it) is the seam to move out.

use std::cmp::Ordering;

use bytes::{BufMut, Bytes, BytesMut};

use crate::cql::ast::{Literal, Term};
use crate::frame::WriteExt;

/// A CQL data type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CqlType {
    /// `ascii`
    Ascii,
    /// `bigint`
    BigInt,
    /// `blob`
    Blob,
    /// `boolean`
    Boolean,
    /// `counter`
    Counter,
    /// `decimal`
    Decimal,
    /// `double`
    Double,
    /// `float`
    Float,
    /// `int`
    Int,
    /// `timestamp`
    Timestamp,
    /// `uuid`
    Uuid,
    /// `text` / `varchar`
    Text,
    /// `varint`
    Varint,
    /// `timeuuid`
    TimeUuid,
    /// `inet`
    Inet,
    /// `date`
    Date,
    /// `time`
    Time,
    /// `smallint`
    SmallInt,
    /// `tinyint`
    TinyInt,
    /// `duration`
    Duration,
    /// `list<T>`
    List(Box<CqlType>),
    /// `set<T>`
    Set(Box<CqlType>),
    /// `map<K, V>`
    Map(Box<CqlType>, Box<CqlType>),
    /// `tuple<...>`
    Tuple(Vec<CqlType>),
}

impl CqlType {
    /// Parses a normalised type name (`map<text,frozen<list<int>>>`);
    /// `frozen<>` is accepted and dropped.
    pub(crate) fn parse(text: &str) -> Result<CqlType, String> {
        let t = text.trim();
        if let Some(inner) = strip_generic(t, "frozen") {
            return CqlType::parse(inner);
        }
        if let Some(inner) = strip_generic(t, "list") {
            return Ok(CqlType::List(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(t, "set") {
            return Ok(CqlType::Set(Box::new(CqlType::parse(inner)?)));
        }
        if let Some(inner) = strip_generic(t, "map") {
            let parts = split_top_level(inner);
            if parts.len() != 2 {
                return Err(format!("map type needs two parameters: {text}"));
            }
            return Ok(CqlType::Map(
                Box::new(CqlType::parse(parts[0])?),
                Box::new(CqlType::parse(parts[1])?),
            ));
        }
        if let Some(inner) = strip_generic(t, "tuple") {
            return split_top_level(inner)
                .into_iter()
                .map(CqlType::parse)
                .collect::<Result<Vec<_>, _>>()
                .map(CqlType::Tuple);
        }
        Ok(match t.to_ascii_lowercase().as_str() {
            "ascii" => CqlType::Ascii,
            "bigint" => CqlType::BigInt,
            "blob" => CqlType::Blob,
            "boolean" => CqlType::Boolean,
            "counter" => CqlType::Counter,
            "decimal" => CqlType::Decimal,
            "double" => CqlType::Double,
            "float" => CqlType::Float,
            "int" => CqlType::Int,
            "timestamp" => CqlType::Timestamp,
            "uuid" => CqlType::Uuid,
            "text" | "varchar" => CqlType::Text,
            "varint" => CqlType::Varint,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            "date" => CqlType::Date,
            "time" => CqlType::Time,
            "smallint" => CqlType::SmallInt,
            "tinyint" => CqlType::TinyInt,
            "duration" => CqlType::Duration,
            other => return Err(format!("Unknown type {other}")),
        })
    }

    /// The type's CQL name as `system_schema.columns.type` shows it.
    pub(crate) fn cql_name(&self) -> String {
        match self {
            CqlType::Ascii => "ascii".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Blob => "blob".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::Counter => "counter".into(),
            CqlType::Decimal => "decimal".into(),
            CqlType::Double => "double".into(),
            CqlType::Float => "float".into(),
            CqlType::Int => "int".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Uuid => "uuid".into(),
            CqlType::Text => "text".into(),
            CqlType::Varint => "varint".into(),
            CqlType::TimeUuid => "timeuuid".into(),
            CqlType::Inet => "inet".into(),
            CqlType::Date => "date".into(),
            CqlType::Time => "time".into(),
            CqlType::SmallInt => "smallint".into(),
            CqlType::TinyInt => "tinyint".into(),
            CqlType::Duration => "duration".into(),
            CqlType::List(t) => format!("list<{}>", t.cql_name()),
            CqlType::Set(t) => format!("set<{}>", t.cql_name()),
            CqlType::Map(k, v) => format!("map<{}, {}>", k.cql_name(), v.cql_name()),
            CqlType::Tuple(ts) => format!(
                "tuple<{}>",
                ts.iter()
                    .map(|t| t.cql_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Writes the protocol's `[option]` for this type.
    pub(crate) fn write_option(&self, out: &mut BytesMut) {
        let id: u16 = match self {
            CqlType::Ascii => 0x0001,
            CqlType::BigInt => 0x0002,
            CqlType::Blob => 0x0003,
            CqlType::Boolean => 0x0004,
            CqlType::Counter => 0x0005,
            CqlType::Decimal => 0x0006,
            CqlType::Double => 0x0007,
            CqlType::Float => 0x0008,
            CqlType::Int => 0x0009,
            CqlType::Timestamp => 0x000B,
            CqlType::Uuid => 0x000C,
            CqlType::Text => 0x000D,
            CqlType::Varint => 0x000E,
            CqlType::TimeUuid => 0x000F,
            CqlType::Inet => 0x0010,
            CqlType::Date => 0x0011,
            CqlType::Time => 0x0012,
            CqlType::SmallInt => 0x0013,
            CqlType::TinyInt => 0x0014,
            CqlType::Duration => 0x0015,
            CqlType::List(t) => {
                out.put_u16(0x0020);
                t.write_option(out);
                return;
            }
            CqlType::Map(k, v) => {
                out.put_u16(0x0021);
                k.write_option(out);
                v.write_option(out);
                return;
            }
            CqlType::Set(t) => {
                out.put_u16(0x0022);
                t.write_option(out);
                return;
            }
            CqlType::Tuple(ts) => {
                out.put_u16(0x0031);
                out.put_u16(ts.len() as u16);
                for t in ts {
                    t.write_option(out);
                }
                return;
            }
        };
        out.put_u16(id);
    }

    /// Whether the type is a collection (non-frozen collections can be
    /// appended to and removed from).
    pub(crate) fn is_collection(&self) -> bool {
        matches!(
            self,
            CqlType::List(_) | CqlType::Set(_) | CqlType::Map(_, _)
        )
    }

    /// Checks that `bytes` is a valid serialized value of this type.
    pub(crate) fn validate(&self, bytes: &[u8]) -> Result<(), String> {
        let fixed = |n: usize, name: &str| {
            if bytes.len() == n || bytes.is_empty() {
                Ok(())
            } else {
                Err(format!("Expected {n} or 0 byte {name} ({})", bytes.len()))
            }
        };
        match self {
            CqlType::Int => fixed(4, "int"),
            CqlType::BigInt | CqlType::Counter => fixed(8, "long"),
            CqlType::Timestamp => fixed(8, "timestamp"),
            CqlType::Double => fixed(8, "double"),
            CqlType::Float => fixed(4, "float"),
            CqlType::SmallInt => fixed(2, "short"),
            CqlType::TinyInt => fixed(1, "byte"),
            CqlType::Boolean => fixed(1, "boolean"),
            CqlType::Date => fixed(4, "date"),
            CqlType::Time => fixed(8, "time"),
            CqlType::Uuid | CqlType::TimeUuid => fixed(16, "UUID"),
            CqlType::Inet => match bytes.len() {
                0 | 4 | 16 => Ok(()),
                n => Err(format!("Expected 4 or 16 byte inet address ({n})")),
            },
            CqlType::Text => std::str::from_utf8(bytes)
                .map(|_| ())
                .map_err(|_| "Invalid UTF-8 bytes in text value".to_string()),
            CqlType::Ascii => {
                if bytes.is_ascii() {
                    Ok(())
                } else {
                    Err("Invalid byte for ascii".into())
                }
            }
            CqlType::List(t) | CqlType::Set(t) => {
                for e in collection_elements(bytes)? {
                    t.validate(e.ok_or("null is not supported inside collections")?)?;
                }
                Ok(())
            }
            CqlType::Map(k, v) => {
                let elems = collection_elements_pairs(bytes)?;
                for (ke, ve) in elems {
                    k.validate(ke.ok_or("null is not supported inside collections")?)?;
                    v.validate(ve.ok_or("null is not supported inside collections")?)?;
                }
                Ok(())
            }
            CqlType::Tuple(ts) => {
                let mut r = crate::frame::Reader::new(bytes);
                for t in ts {
                    if r.remaining() == 0 {
                        break;
                    }
                    if let Some(b) = r.bytes_opt().map_err(|e| e.0)? {
                        t.validate(b)?;
                    }
                }
                if r.remaining() != 0 {
                    return Err("Invalid tuple value: too many bytes".into());
                }
                Ok(())
            }
            CqlType::Blob | CqlType::Decimal | CqlType::Varint | CqlType::Duration => Ok(()),
        }
    }

    /// Compares two serialized values of this type in CQL order.
    pub(crate) fn compare(&self, a: &[u8], b: &[u8]) -> Ordering {
        match self {
            CqlType::Int
            | CqlType::BigInt
            | CqlType::Counter
            | CqlType::Timestamp
            | CqlType::SmallInt
            | CqlType::TinyInt
            | CqlType::Time => signed(a).cmp(&signed(b)),
            CqlType::Date => {
                // unsigned with the epoch at 2^31
                a.cmp(b)
            }
            CqlType::Double if a.len() == 8 && b.len() == 8 => {
                let x = f64::from_be_bytes(a.try_into().expect("8"));
                let y = f64::from_be_bytes(b.try_into().expect("8"));
                x.total_cmp(&y)
            }
            CqlType::Float if a.len() == 4 && b.len() == 4 => {
                let x = f32::from_be_bytes(a.try_into().expect("4"));
                let y = f32::from_be_bytes(b.try_into().expect("4"));
                x.total_cmp(&y)
            }
            CqlType::Varint => varint_cmp(a, b),
            CqlType::TimeUuid if a.len() == 16 && b.len() == 16 => {
                timeuuid_ts(a).cmp(&timeuuid_ts(b)).then_with(|| a.cmp(b))
            }
            CqlType::Uuid if a.len() == 16 && b.len() == 16 => {
                // version first, then time for v1, then bytes
                let (va, vb) = (a[6] >> 4, b[6] >> 4);
                va.cmp(&vb)
                    .then_with(|| {
                        if va == 1 {
                            timeuuid_ts(a).cmp(&timeuuid_ts(b))
                        } else {
                            Ordering::Equal
                        }
                    })
                    .then_with(|| a.cmp(b))
            }
            CqlType::Boolean => a.cmp(b),
            CqlType::List(t) | CqlType::Set(t) => {
                let (Ok(xa), Ok(xb)) = (collection_elements(a), collection_elements(b)) else {
                    return a.cmp(b);
                };
                for (x, y) in xa.iter().zip(xb.iter()) {
                    let o = t.compare(x.unwrap_or(&[]), y.unwrap_or(&[]));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                xa.len().cmp(&xb.len())
            }
            _ => a.cmp(b),
        }
    }

    /// Appends an order-preserving encoding of `value` to `out`: comparing
    /// two encodings bytewise gives the same order as [`CqlType::compare`]
    /// (for the types clustering keys use). `descending` inverts it.
    pub(crate) fn sort_key(&self, value: &[u8], descending: bool, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            CqlType::Int
            | CqlType::BigInt
            | CqlType::Counter
            | CqlType::Timestamp
            | CqlType::SmallInt
            | CqlType::TinyInt
            | CqlType::Time
                if !value.is_empty() =>
            {
                out.push(1);
                out.push(value[0] ^ 0x80);
                out.extend_from_slice(&value[1..]);
            }
            CqlType::Double | CqlType::Float if !value.is_empty() => {
                out.push(1);
                let neg = value[0] & 0x80 != 0;
                for (i, b) in value.iter().enumerate() {
                    out.push(if neg {
                        !b
                    } else if i == 0 {
                        b ^ 0x80
                    } else {
                        *b
                    });
                }
            }
            CqlType::TimeUuid if value.len() == 16 => {
                out.push(1);
                out.extend_from_slice(&timeuuid_ts(value).to_be_bytes());
                out.extend_from_slice(value);
            }
            CqlType::Uuid if value.len() == 16 => {
                out.push(1);
                out.push(value[6] >> 4);
                let ts = if value[6] >> 4 == 1 {
                    timeuuid_ts(value)
                } else {
                    0
                };
                out.extend_from_slice(&ts.to_be_bytes());
                out.extend_from_slice(value);
            }
            CqlType::Varint if !value.is_empty() => {
                // sign, then length (inverted for negatives), then bytes
                out.push(1);
                let neg = value[0] & 0x80 != 0;
                let len = value.len() as u32;
                if neg {
                    out.push(0);
                    out.extend_from_slice(&(!len).to_be_bytes());
                } else {
                    out.push(1);
                    out.extend_from_slice(&len.to_be_bytes());
                }
                out.extend_from_slice(value);
            }
            _ => {
                // variable-length bytewise order: escape 0x00 as 0x00 0xFF,
                // terminate with 0x00 0x00.
                out.push(1);
                for &b in value {
                    out.push(b);
                    if b == 0 {
                        out.push(0xFF);
                    }
                }
                out.push(0);
                out.push(0);
            }
        }
        if descending {
            for b in &mut out[start..] {
                *b = !*b;
            }
        }
    }
}

fn signed(b: &[u8]) -> i64 {
    match b.len() {
        1 => i64::from(b[0] as i8),
        2 => i64::from(i16::from_be_bytes([b[0], b[1]])),
        4 => i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        8 => i64::from_be_bytes(b.try_into().expect("8")),
        _ => i64::MIN,
    }
}

fn varint_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let na = a.first().is_some_and(|x| x & 0x80 != 0);
    let nb = b.first().is_some_and(|x| x & 0x80 != 0);
    match (na, nb) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
        (true, true) => b.len().cmp(&a.len()).then_with(|| a.cmp(b)),
    }
}

/// The 60-bit timestamp of a version-1 UUID.
pub(crate) fn timeuuid_ts(u: &[u8]) -> u64 {
    let time_low = u64::from(u32::from_be_bytes([u[0], u[1], u[2], u[3]]));
    let time_mid = u64::from(u16::from_be_bytes([u[4], u[5]]));
    let time_hi = u64::from(u16::from_be_bytes([u[6], u[7]]) & 0x0FFF);
    (time_hi << 48) | (time_mid << 32) | time_low
}

fn strip_generic<'a>(t: &'a str, name: &str) -> Option<&'a str> {
    let lower = t.get(..name.len())?;
    if !lower.eq_ignore_ascii_case(name) {
        return None;
    }
    let rest = t[name.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    rest.strip_suffix('>')
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].trim());
    parts
}

/// Splits a serialized list or set into its elements.
pub(crate) fn collection_elements(bytes: &[u8]) -> Result<Vec<Option<&[u8]>>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = crate::frame::Reader::new(bytes);
    // each element is at least its 4-byte length
    let n = element_count(&mut r, 4, "collection elements")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.bytes_opt().map_err(|e| e.0)?);
    }
    if r.remaining() != 0 {
        return Err("Invalid collection value: trailing bytes".into());
    }
    Ok(out)
}

/// A collection value's element count, checked against its bytes before
/// it sizes anything.
fn element_count(
    r: &mut crate::frame::Reader<'_>,
    min_len: usize,
    what: &str,
) -> Result<usize, String> {
    let n = r.int().map_err(|e| e.0)?;
    let n = usize::try_from(n).map_err(|_| format!("negative number of {what}: {n}"))?;
    r.count(n, min_len, what).map_err(|e| e.0)
}

/// A map's entries, as (key, value) pairs.
pub(crate) type MapEntries<'a> = Vec<(Option<&'a [u8]>, Option<&'a [u8]>)>;

/// Splits a serialized map into (key, value) pairs.
pub(crate) fn collection_elements_pairs(bytes: &[u8]) -> Result<MapEntries<'_>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = crate::frame::Reader::new(bytes);
    // each entry is at least its key's and its value's 4-byte lengths
    let n = element_count(&mut r, 8, "map entries")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.bytes_opt().map_err(|e| e.0)?;
        let v = r.bytes_opt().map_err(|e| e.0)?;
        out.push((k, v));
    }
    if r.remaining() != 0 {
        return Err("Invalid map value: trailing bytes".into());
    }
    Ok(out)
}

/// Serializes a list/set from elements.
pub(crate) fn encode_collection<'a>(elems: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i32(elems.len() as i32);
    for e in elems {
        out.put_value(Some(e));
    }
    out.freeze()
}

/// Serializes a map from entries.
pub(crate) fn encode_map<'a>(
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i32(entries.len() as i32);
    for (k, v) in entries {
        out.put_value(Some(k));
        out.put_value(Some(v));
    }
    out.freeze()
}

/// Sorts and de-duplicates set elements in CQL order.
pub(crate) fn normalise_set(elem: &CqlType, mut elems: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    elems.sort_by(|a, b| elem.compare(a, b));
    elems.dedup_by(|a, b| elem.compare(a, b) == Ordering::Equal);
    elems
}

/// Sorts map entries by key and keeps the last value for duplicate keys.
pub(crate) fn normalise_map(
    key: &CqlType,
    mut entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    // stable sort keeps insertion order among equal keys; keep the last
    entries.sort_by(|a, b| key.compare(&a.0, &b.0));
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if key.compare(&last.0, &e.0) == Ordering::Equal => *last = e,
            _ => out.push(e),
        }
    }
    out
}

/// Resolves a bind marker to its value; implemented by the executor.
pub(crate) trait Binder {
    /// The serialized value of bind marker `index` (`None` for null);
    /// `Err(Unset)` when it was sent as unset.
    fn bound(&self, index: usize) -> Result<BoundValue<'_>, String>;
}

/// A bound value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BoundValue<'a> {
    Value(&'a [u8]),
    Null,
    Unset,
}

/// The result of evaluating a term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evaluated {
    Value(Bytes),
    Null,
    Unset,
}

impl Evaluated {
    pub(crate) fn into_option(self) -> Option<Bytes> {
        match self {
            Evaluated::Value(b) => Some(b),
            _ => None,
        }
    }
}

/// Evaluates a term to a serialized value of `ty`.
pub(crate) fn evaluate(
    ty: &CqlType,
    term: &Term,
    binder: &dyn Binder,
) -> Result<Evaluated, String> {
    match term {
        Term::Bind { index, .. } => match binder.bound(*index)? {
            BoundValue::Value(b) => {
                ty.validate(b)?;
                Ok(Evaluated::Value(Bytes::copy_from_slice(b)))
            }
            BoundValue::Null => Ok(Evaluated::Null),
            BoundValue::Unset => Ok(Evaluated::Unset),
        },
        Term::Literal(Literal::Null) => Ok(Evaluated::Null),
        Term::Literal(lit) => encode_literal(ty, lit, binder).map(Evaluated::Value),
        Term::Function { name, args } => crate::functions::evaluate_call(ty, name, args, binder),
    }
}

/// A new version-1 UUID from the current time and random node bits.
pub(crate) fn new_timeuuid() -> [u8; 16] {
    // 100ns intervals since 1582-10-15
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = now.as_nanos() as u64 / 100 + 0x01B2_1DD2_1381_4000;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&(ts as u32).to_be_bytes());
    b[4..6].copy_from_slice(&((ts >> 32) as u16).to_be_bytes());
    b[6..8].copy_from_slice(&((((ts >> 48) as u16) & 0x0FFF) | 0x1000).to_be_bytes());
    let rnd = fastrand::u64(..).to_be_bytes();
    b[8..16].copy_from_slice(&rnd);
    b[8] = (b[8] & 0x3F) | 0x80;
    b
}

/// Stands for the name of the column (or marker) a value is for, in the
/// messages of [`evaluate`]; the executor, which knows the name, puts it in
/// (see [`name_receiver`]).
pub(crate) const RECEIVER: &str = "\u{0}receiver\u{0}";

/// Replaces [`RECEIVER`] in an error message by the receiver's name.
pub(crate) fn name_receiver(message: &str, name: &str) -> String {
    message.replace(RECEIVER, name)
}

/// Cassandra's refusal of a literal of the wrong kind, e.g.
/// `Invalid STRING constant (abc) for "v" of type int`.
fn type_mismatch(ty: &CqlType, lit: &Literal) -> String {
    let (kind, text) = match lit {
        Literal::String(s) => ("STRING", s.clone()),
        Literal::Integer(s) => ("INTEGER", s.clone()),
        Literal::Float(s) => ("FLOAT", s.clone()),
        Literal::Uuid(s) => ("UUID", s.clone()),
        Literal::Boolean(b) => ("BOOLEAN", b.to_string()),
        Literal::Null => ("NULL", "null".into()),
        Literal::Blob(b) => (
            "HEX",
            format!(
                "0x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        ),
        Literal::List(_) => {
            return format!(
                "Invalid list literal for {RECEIVER} of type {}",
                ty.cql_name()
            );
        }
        Literal::Set(_) => {
            return format!(
                "Invalid set literal for {RECEIVER} of type {}",
                ty.cql_name()
            );
        }
        Literal::Map(_) => {
            return format!(
                "Invalid map literal for {RECEIVER} of type {}",
                ty.cql_name()
            );
        }
    };
    format!(
        "Invalid {kind} constant ({text}) for \"{RECEIVER}\" of type {}",
        ty.cql_name()
    )
}

/// Cassandra's refusal of an integer literal out of its type's range.
fn unable_to_make(what: &str, s: &str) -> String {
    format!("Unable to make {what} from '{s}'")
}

/// Serializes a literal as a value of `ty`.
pub(crate) fn encode_literal(
    ty: &CqlType,
    lit: &Literal,
    binder: &dyn Binder,
) -> Result<Bytes, String> {
    let bad = || type_mismatch(ty, lit);
    let b = |v: &[u8]| Ok(Bytes::copy_from_slice(v));
    match (ty, lit) {
        (CqlType::Int, Literal::Integer(s)) => b(&s.parse::<i32>().map_err(|_| unable_to_make("int", s))?.to_be_bytes()),
        (CqlType::BigInt | CqlType::Counter, Literal::Integer(s)) => {
            b(&s.parse::<i64>().map_err(|_| unable_to_make("long", s))?.to_be_bytes())
        }
        (CqlType::SmallInt, Literal::Integer(s)) => b(&s.parse::<i16>().map_err(|_| unable_to_make("short", s))?.to_be_bytes()),
        (CqlType::TinyInt, Literal::Integer(s)) => b(&s.parse::<i8>().map_err(|_| unable_to_make("byte", s))?.to_be_bytes()),
        (CqlType::Varint, Literal::Integer(s)) => {
            let v = s.parse::<i128>().map_err(|_| bad())?;
            b(&minimal_twos_complement(v))
        }
        (CqlType::Decimal, Literal::Integer(s) | Literal::Float(s)) => encode_decimal(s).ok_or_else(bad),
        (CqlType::Double, Literal::Integer(s) | Literal::Float(s)) => {
            b(&parse_float(s).ok_or_else(bad)?.to_be_bytes())
        }
        (CqlType::Float, Literal::Integer(s) | Literal::Float(s)) => {
            b(&(parse_float(s).ok_or_else(bad)? as f32).to_be_bytes())
        }
        (CqlType::Timestamp, Literal::Integer(s)) => b(&s.parse::<i64>().map_err(|_| bad())?.to_be_bytes()),
        (CqlType::Timestamp, Literal::String(s)) => b(&parse_timestamp(s).ok_or_else(|| {
            format!("Unable to parse a date/time from '{s}': use 'yyyy-mm-dd[ hh:mm[:ss[.fff]]][Z]' or milliseconds since the epoch")
        })?.to_be_bytes()),
        (CqlType::Text | CqlType::Ascii, Literal::String(s)) => {
            if *ty == CqlType::Ascii && !s.is_ascii() {
                return Err(format!("Invalid ASCII character in string literal '{s}'"));
            }
            b(s.as_bytes())
        }
        (CqlType::Boolean, Literal::Boolean(v)) => b(&[u8::from(*v)]),
        (CqlType::Boolean, Literal::String(s)) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
            b(&[u8::from(s.eq_ignore_ascii_case("true"))])
        }
        (CqlType::Uuid | CqlType::TimeUuid, Literal::Uuid(s) | Literal::String(s)) => {
            let u = parse_uuid(s).ok_or_else(bad)?;
            if *ty == CqlType::TimeUuid && u[6] >> 4 != 1 {
                return Err(format!("Unsupported UUID for timeuuid: {s} is not a version 1 (time-based) UUID"));
            }
            b(&u)
        }
        (CqlType::Blob, Literal::Blob(v)) => b(v),
        (CqlType::Inet, Literal::String(s)) => {
            let ip: std::net::IpAddr = s.parse().map_err(|_| format!("Unable to make inet address from '{s}'"))?;
            match ip {
                std::net::IpAddr::V4(v4) => b(&v4.octets()),
                std::net::IpAddr::V6(v6) => b(&v6.octets()),
            }
        }
        (CqlType::Date, Literal::String(s)) => {
            let days = parse_date_days(s).ok_or_else(bad)?;
            b(&((days + (1i64 << 31)) as u32).to_be_bytes())
        }
        (CqlType::Date, Literal::Integer(s)) => b(&s.parse::<u32>().map_err(|_| bad())?.to_be_bytes()),
        (CqlType::Time, Literal::Integer(s)) => b(&s.parse::<i64>().map_err(|_| bad())?.to_be_bytes()),
        (CqlType::List(elem), Literal::List(items)) => {
            let vals = items
                .iter()
                .map(|t| non_null(evaluate(elem, t, binder)?))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(encode_collection(vals.iter().map(|v| &v[..])))
        }
        (CqlType::Set(elem), Literal::Set(items) | Literal::List(items)) => {
            let vals = items
                .iter()
                .map(|t| non_null(evaluate(elem, t, binder)?).map(|b| b.to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            let vals = normalise_set(elem, vals);
            Ok(encode_collection(vals.iter().map(|v| &v[..])))
        }
        (CqlType::Map(_, _), Literal::Set(items)) if items.is_empty() => Ok(encode_map(std::iter::empty())),
        (CqlType::Map(k, v), Literal::Map(items)) => {
            let vals = items
                .iter()
                .map(|(kt, vt)| {
                    Ok((
                        non_null(evaluate(k, kt, binder)?)?.to_vec(),
                        non_null(evaluate(v, vt, binder)?)?.to_vec(),
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let vals = normalise_map(k, vals);
            Ok(encode_map(vals.iter().map(|(a, b)| (&a[..], &b[..]))))
        }
        (CqlType::Tuple(ts), Literal::List(items)) => {
            if items.len() > ts.len() {
                return Err(format!("Invalid tuple literal: too many elements for {}", ty.cql_name()));
            }
            let mut out = BytesMut::new();
            for (t, item) in ts.iter().zip(items) {
                out.put_value(evaluate(t, item, binder)?.into_option().as_deref());
            }
            Ok(out.freeze())
        }
        _ => Err(bad()),
    }
}

fn non_null(e: Evaluated) -> Result<Bytes, String> {
    match e {
        Evaluated::Value(b) => Ok(b),
        _ => Err("null is not supported inside collections".into()),
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "infinity" => Some(f64::INFINITY),
        "-Infinity" | "-infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn minimal_twos_complement(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xFF && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

fn encode_decimal(s: &str) -> Option<Bytes> {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{frac_part}");
    let unscaled: i128 = digits.parse().ok()?;
    let scale = frac_part.len() as i32 - exp;
    let mut out = BytesMut::new();
    out.put_i32(scale);
    out.put_slice(&minimal_twos_complement(unscaled));
    Some(out.freeze())
}

/// Parses `8-4-4-4-12` hex into bytes.
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Formats 16 bytes as a UUID string.
pub(crate) fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_date_days(s: &str) -> Option<i64> {
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Parses `yyyy-mm-dd[ |T]hh:mm[:ss[.fff]][Z|+hhmm]` into epoch millis.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (date, rest) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], s[i + 1..].trim()),
        None => (s, ""),
    };
    let days = parse_date_days(date)?;
    let mut ms = days * 86_400_000;
    if rest.is_empty() {
        return Some(ms);
    }
    let (time, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let mut parts = time.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let mi: i64 = parts.next()?.parse().ok()?;
    let (sec, frac) = match parts.next() {
        Some(sf) => match sf.split_once('.') {
            Some((a, f)) => {
                let f3: String = f.chars().chain("000".chars()).take(3).collect();
                (a.parse::<i64>().ok()?, f3.parse::<i64>().ok()?)
            }
            None => (sf.parse::<i64>().ok()?, 0),
        },
        None => (0, 0),
    };
    ms += h * 3_600_000 + mi * 60_000 + sec * 1000 + frac;
    if !offset.is_empty() && !offset.eq_ignore_ascii_case("z") {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let digits: String = offset[1..].chars().filter(|c| c.is_ascii_digit()).collect();
        if digits.len() != 4 {
            return None;
        }
        let oh: i64 = digits[..2].parse().ok()?;
        let om: i64 = digits[2..].parse().ok()?;
        ms -= sign * (oh * 3_600_000 + om * 60_000);
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoBinds;
    impl Binder for NoBinds {
        fn bound(&self, index: usize) -> Result<BoundValue<'_>, String> {
            Err(format!("no marker {index}"))
        }
    }

    #[test]
    fn parses_type_names() {
        assert_eq!(CqlType::parse("int").unwrap(), CqlType::Int);
        assert_eq!(
            CqlType::parse("map<text,frozen<list<int>>>").unwrap(),
            CqlType::Map(
                Box::new(CqlType::Text),
                Box::new(CqlType::List(Box::new(CqlType::Int)))
            )
        );
        assert_eq!(CqlType::parse("varchar").unwrap().cql_name(), "text");
        assert!(CqlType::parse("nope").is_err());
    }

    #[test]
    fn sort_keys_preserve_order() {
        let cases: Vec<(CqlType, Vec<Vec<u8>>)> = vec![
            (
                CqlType::Int,
                [-5i32, -1, 0, 1, 7, i32::MAX]
                    .iter()
                    .map(|v| v.to_be_bytes().to_vec())
                    .collect(),
            ),
            (
                CqlType::Double,
                [-10.5f64, -0.1, 0.0, 0.2, 99.0]
                    .iter()
                    .map(|v| v.to_be_bytes().to_vec())
                    .collect(),
            ),
            (
                CqlType::Text,
                ["", "a", "a\0", "ab", "b"]
                    .iter()
                    .map(|s| s.as_bytes().to_vec())
                    .collect(),
            ),
        ];
        for (ty, values) in cases {
            for w in values.windows(2) {
                assert_eq!(ty.compare(&w[0], &w[1]), Ordering::Less, "{ty:?}");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                ty.sort_key(&w[0], false, &mut a);
                ty.sort_key(&w[1], false, &mut b);
                assert!(a < b, "{ty:?} {:?} {:?}", w[0], w[1]);
                let (mut a, mut b) = (Vec::new(), Vec::new());
                ty.sort_key(&w[0], true, &mut a);
                ty.sort_key(&w[1], true, &mut b);
                assert!(a > b);
            }
        }
    }

    #[test]
    fn literals_encode_and_reject_mismatches() {
        let int = encode_literal(&CqlType::Int, &Literal::Integer("-2".into()), &NoBinds).unwrap();
        assert_eq!(&int[..], &(-2i32).to_be_bytes());
        let err =
            encode_literal(&CqlType::Int, &Literal::String("x".into()), &NoBinds).unwrap_err();
        assert!(err.contains("type int"), "{err}");
        let set = encode_literal(
            &CqlType::Set(Box::new(CqlType::Int)),
            &Literal::Set(vec![
                Term::Literal(Literal::Integer("3".into())),
                Term::Literal(Literal::Integer("1".into())),
                Term::Literal(Literal::Integer("3".into())),
            ]),
            &NoBinds,
        )
        .unwrap();
        let elems = collection_elements(&set).unwrap();
        assert_eq!(elems.len(), 2);
        assert_eq!(elems[0].unwrap(), &1i32.to_be_bytes());
        assert_eq!(
            parse_timestamp("2024-01-02 03:04:05.678Z").unwrap(),
            1_704_164_645_678
        );
        assert_eq!(parse_timestamp("1970-01-01").unwrap(), 0);
        assert_eq!(minimal_twos_complement(-1), vec![0xFF]);
        assert_eq!(minimal_twos_complement(128), vec![0, 128]);
        let u = parse_uuid("123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(format_uuid(&u), "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(timeuuid_ts(&new_timeuuid()) >> 56, 0x01);
    }

    #[test]
    fn a_collection_count_is_checked_against_its_bytes() {
        let e = collection_elements(&i32::MAX.to_be_bytes()).unwrap_err();
        assert!(
            e.contains("2147483647 collection elements announced"),
            "{e}"
        );
        let mut one = 2i32.to_be_bytes().to_vec();
        one.extend_from_slice(&[0, 0, 0, 1, 9]);
        let e = collection_elements(&one).unwrap_err();
        assert!(e.contains("the 5 bytes that follow hold at most 1"), "{e}");
        let e = collection_elements_pairs(&3i32.to_be_bytes()).unwrap_err();
        assert!(e.contains("3 map entries announced"), "{e}");
        assert!(collection_elements(&(-1i32).to_be_bytes()).is_err());
        // null elements count as their 4 bytes
        let nulls = [0, 0, 0, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(collection_elements(&nulls).unwrap(), vec![None, None]);
    }

    #[test]
    fn validates_fixed_sizes() {
        assert!(CqlType::Int.validate(&[0, 0, 0, 1]).is_ok());
        let e = CqlType::Int.validate(&[0; 8]).unwrap_err();
        assert!(e.contains("Expected 4"), "{e}");
        assert!(CqlType::Text.validate(&[0xFF]).is_err());
    }
}
