//! Cassandra's native scalar functions and `CAST`, as selectors
//! (`SELECT now() FROM system.local`, `toDate(ts)`, `CAST(v AS text)`) and
//! as terms (`INSERT ... VALUES (now(), ...)`, `WHERE id = uuid()`).
//!
//! The functions are Cassandra 4.0's time and UUID functions (`now`,
//! `currentTimeUUID`, `currentTimestamp`, `currentDate`, `currentTime`,
//! `uuid`, `minTimeuuid`, `maxTimeuuid`, `toDate`, `toTimestamp`,
//! `toUnixTimestamp`, `dateOf`, `unixTimestampOf`) and the blob conversions
//! (`textAsBlob`, `blobAsText`, ... for every native type). Each has its
//! overloads (argument types → return type); a call picks the first
//! overload its arguments fit. A null argument gives null.

use bytes::Bytes;

use crate::cql::ast::Term;
use crate::types::{self, Binder, CqlType, Evaluated, RECEIVER};

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// 100 ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
const UUID_EPOCH_OFFSET: i64 = 0x01B2_1DD2_1381_4000;
/// A `date` value is days since the epoch, centred on 2^31.
const DATE_CENTRE: i64 = 1 << 31;

/// One overload: argument types and return type.
type Signature = (Vec<CqlType>, CqlType);

/// The overloads of native function `name` (lower-case), or `None` if no
/// such function exists.
fn overloads(name: &str) -> Option<Vec<Signature>> {
    use CqlType::*;
    let one = |a: CqlType, r: CqlType| (vec![a], r);
    Some(match name {
        "now" | "currenttimeuuid" | "current_timeuuid" => vec![(vec![], TimeUuid)],
        "uuid" => vec![(vec![], Uuid)],
        "currenttimestamp" | "current_timestamp" => vec![(vec![], Timestamp)],
        "currentdate" | "current_date" => vec![(vec![], Date)],
        "currenttime" | "current_time" => vec![(vec![], Time)],
        "mintimeuuid" | "maxtimeuuid" => vec![one(Timestamp, TimeUuid)],
        "dateof" => vec![one(TimeUuid, Timestamp)],
        "unixtimestampof" => vec![one(TimeUuid, BigInt)],
        "todate" => vec![one(TimeUuid, Date), one(Timestamp, Date)],
        "totimestamp" => vec![one(TimeUuid, Timestamp), one(Date, Timestamp)],
        "tounixtimestamp" => vec![
            one(TimeUuid, BigInt),
            one(Timestamp, BigInt),
            one(Date, BigInt),
        ],
        _ => {
            let native = |t: &str| {
                CqlType::parse(t)
                    .ok()
                    .filter(|t| !t.is_collection() && !matches!(t, Tuple(_) | Counter | Blob))
            };
            if let Some(t) = name.strip_suffix("asblob").and_then(native) {
                vec![one(t, Blob)]
            } else if let Some(t) = name.strip_prefix("blobas").and_then(native) {
                vec![one(Blob, t)]
            } else {
                return None;
            }
        }
    })
}

/// Whether a value of type `from` may be used where `to` is expected
/// (Cassandra's value compatibility, for the types functions return).
fn assignable(to: &CqlType, from: &CqlType) -> bool {
    to == from
        || matches!(
            (to, from),
            (CqlType::Uuid, CqlType::TimeUuid)
                | (CqlType::BigInt, CqlType::Timestamp)
                | (CqlType::Text, CqlType::Ascii)
                | (CqlType::Blob, _)
        )
}

/// Resolves a call in a selection: the overload whose argument types are
/// those of the selected arguments. `Err` is Cassandra's message.
pub(crate) fn resolve(name: &str, arg_types: &[CqlType]) -> Result<Signature, String> {
    if matches!(name, "min" | "max" | "sum" | "avg") {
        return Err(format!(
            "The aggregate function {name}() is not supported by testkit (only COUNT(*))"
        ));
    }
    let sigs = overloads(name).ok_or_else(|| format!("Unknown function '{name}'"))?;
    sigs.iter()
        .find(|(args, _)| {
            args.len() == arg_types.len()
                && args.iter().zip(arg_types).all(|(a, t)| assignable(a, t))
        })
        .cloned()
        .ok_or_else(|| no_signature(name, &sigs, arg_types.len()))
}

fn no_signature(name: &str, sigs: &[Signature], given: usize) -> String {
    if sigs.iter().all(|(a, _)| a.len() != given) {
        return format!(
            "Invalid number of arguments in call to function system.{name}: {} required but {given} provided",
            sigs[0].0.len()
        );
    }
    let known: Vec<String> = sigs
        .iter()
        .map(|(args, ret)| {
            let args: Vec<String> = args.iter().map(CqlType::cql_name).collect();
            format!(
                "system.{name} : ({}) -> {}",
                args.join(", "),
                ret.cql_name()
            )
        })
        .collect();
    format!(
        "Invalid call to function system.{name}, none of its type signatures match (known type signatures: {})",
        known.join(", ")
    )
}

/// The types of the arguments of a call of `name` with `n` arguments, when
/// only one overload fits (so its bind markers can be typed at PREPARE).
pub(crate) fn unique_arg_types(name: &str, n: usize) -> Option<Vec<CqlType>> {
    let sigs = overloads(name)?;
    let mut fits = sigs.into_iter().filter(|(a, _)| a.len() == n);
    let (args, _) = fits.next()?;
    fits.next().is_none().then_some(args)
}

/// Evaluates a function call used as a term, for a receiver of type `ty`.
pub(crate) fn evaluate_call(
    ty: &CqlType,
    name: &str,
    args: &[Term],
    binder: &dyn Binder,
) -> Result<Evaluated, String> {
    let (ret, value) = term_call(name, args, binder)?;
    if !assignable(ty, &ret) {
        return Err(format!(
            "Type error: cannot assign result of function system.{name} (type {}) to {RECEIVER} (type {})",
            ret.cql_name(),
            ty.cql_name()
        ));
    }
    Ok(value.map_or(Evaluated::Null, Evaluated::Value))
}

fn term_call(
    name: &str,
    args: &[Term],
    binder: &dyn Binder,
) -> Result<(CqlType, Option<Bytes>), String> {
    let sigs = overloads(name).ok_or_else(|| format!("Unknown function {name} called"))?;
    'signatures: for (arg_types, ret) in sigs.iter().filter(|(a, _)| a.len() == args.len()) {
        let mut values = Vec::with_capacity(args.len());
        for (want, arg) in arg_types.iter().zip(args) {
            let v = match arg {
                Term::Function { name, args } => {
                    let (got, v) = term_call(name, args, binder)?;
                    if !assignable(want, &got) {
                        continue 'signatures;
                    }
                    v
                }
                other => match types::evaluate(want, other, binder) {
                    Ok(e) => e.into_option(),
                    Err(_) => continue 'signatures,
                },
            };
            values.push(v);
        }
        return Ok((ret.clone(), call(name, arg_types, ret, &values)?));
    }
    Err(no_signature(name, &sigs, args.len()))
}

/// Calls native function `name` of the given overload on its arguments.
pub(crate) fn call(
    name: &str,
    arg_types: &[CqlType],
    ret: &CqlType,
    args: &[Option<Bytes>],
) -> Result<Option<Bytes>, String> {
    let some = |v: &[u8]| Ok(Some(Bytes::copy_from_slice(v)));
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        match a {
            Some(v) if !v.is_empty() => vals.push(v),
            _ => return Ok(None),
        }
    }
    match name {
        "now" | "currenttimeuuid" | "current_timeuuid" => some(&types::new_timeuuid()),
        "uuid" => {
            let mut b: [u8; 16] = fastrand::u128(..).to_be_bytes();
            b[6] = (b[6] & 0x0F) | 0x40;
            b[8] = (b[8] & 0x3F) | 0x80;
            some(&b)
        }
        "currenttimestamp" | "current_timestamp" => some(&now_ms().to_be_bytes()),
        "currentdate" | "current_date" => some(&date_of_ms(now_ms()).to_be_bytes()),
        "currenttime" | "current_time" => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            some(&nanos.rem_euclid(DAY_MS * 1_000_000).to_be_bytes())
        }
        "mintimeuuid" | "maxtimeuuid" => {
            let ms = millis(&arg_types[0], vals[0])?;
            some(&timeuuid_at(ms, name == "maxtimeuuid"))
        }
        _ if name.ends_with("asblob") => Ok(Some(vals[0].clone())),
        _ if name.starts_with("blobas") => {
            ret.validate(vals[0])?;
            Ok(Some(vals[0].clone()))
        }
        _ => {
            // the conversions between timeuuid, timestamp, date and bigint
            let ms = millis(&arg_types[0], vals[0])?;
            convert_millis(ms, ret).map(Some)
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn date_of_ms(ms: i64) -> u32 {
    (ms.div_euclid(DAY_MS) + DATE_CENTRE) as u32
}

/// Milliseconds since the epoch of a timeuuid, timestamp or date value.
fn millis(ty: &CqlType, v: &[u8]) -> Result<i64, String> {
    let bad = || format!("Invalid {} value for a time conversion", ty.cql_name());
    match ty {
        CqlType::TimeUuid => {
            if v.len() != 16 {
                return Err(bad());
            }
            Ok((types::timeuuid_ts(v) as i64 - UUID_EPOCH_OFFSET).div_euclid(10_000))
        }
        CqlType::Timestamp | CqlType::BigInt => {
            Ok(i64::from_be_bytes(v.try_into().map_err(|_| bad())?))
        }
        CqlType::Date => {
            let d = u32::from_be_bytes(v.try_into().map_err(|_| bad())?);
            Ok((i64::from(d) - DATE_CENTRE) * DAY_MS)
        }
        _ => Err(bad()),
    }
}

fn convert_millis(ms: i64, to: &CqlType) -> Result<Bytes, String> {
    Ok(match to {
        CqlType::Timestamp | CqlType::BigInt => Bytes::copy_from_slice(&ms.to_be_bytes()),
        CqlType::Date => Bytes::copy_from_slice(&date_of_ms(ms).to_be_bytes()),
        other => return Err(format!("No time conversion to {}", other.cql_name())),
    })
}

/// The smallest (or largest) version-1 UUID of millisecond `ms`, as
/// Cassandra's `minTimeuuid`/`maxTimeuuid` build them.
fn timeuuid_at(ms: i64, max: bool) -> [u8; 16] {
    let ticks = (ms * 10_000 + UUID_EPOCH_OFFSET + if max { 9_999 } else { 0 }) as u64;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&(ticks as u32).to_be_bytes());
    b[4..6].copy_from_slice(&((ticks >> 32) as u16).to_be_bytes());
    b[6..8].copy_from_slice(&((((ticks >> 48) as u16) & 0x0FFF) | 0x1000).to_be_bytes());
    let lsb: u64 = if max {
        0x7f7f_7f7f_7f7f_7f7f
    } else {
        0x8080_8080_8080_8080
    };
    b[8..16].copy_from_slice(&lsb.to_be_bytes());
    b
}

// ---------------------------------------------------------------- CAST --

fn is_number(t: &CqlType) -> bool {
    matches!(
        t,
        CqlType::TinyInt
            | CqlType::SmallInt
            | CqlType::Int
            | CqlType::BigInt
            | CqlType::Counter
            | CqlType::Float
            | CqlType::Double
    )
}

/// Checks that Cassandra can `CAST` from `from` to `to`.
pub(crate) fn check_cast(from: &CqlType, to: &CqlType) -> Result<(), String> {
    let time = |t: &CqlType| matches!(t, CqlType::Timestamp | CqlType::Date | CqlType::TimeUuid);
    let ok = from == to
        || (is_number(from) && is_number(to) && *to != CqlType::Counter)
        || (matches!(to, CqlType::Text | CqlType::Ascii) && to_text_supported(from))
        || (time(from) && matches!(to, CqlType::Timestamp | CqlType::Date))
        || (*from == CqlType::Ascii && *to == CqlType::Text);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} cannot be cast to {}",
            from.cql_name(),
            to.cql_name()
        ))
    }
}

fn to_text_supported(t: &CqlType) -> bool {
    is_number(t)
        || matches!(
            t,
            CqlType::Text
                | CqlType::Ascii
                | CqlType::Boolean
                | CqlType::Uuid
                | CqlType::TimeUuid
                | CqlType::Timestamp
                | CqlType::Date
                | CqlType::Inet
        )
}

/// Casts a value checked by [`check_cast`].
pub(crate) fn cast(
    from: &CqlType,
    to: &CqlType,
    v: Option<Bytes>,
) -> Result<Option<Bytes>, String> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if from == to || (*from == CqlType::Ascii && *to == CqlType::Text) {
        return Ok(Some(v));
    }
    if matches!(to, CqlType::Text | CqlType::Ascii) {
        return Ok(Some(Bytes::from(to_text(from, &v)?)));
    }
    if matches!(to, CqlType::Timestamp | CqlType::Date) {
        return convert_millis(millis(from, &v)?, to).map(Some);
    }
    let n = number(from, &v)?;
    let out: Vec<u8> = match (to, n) {
        (CqlType::TinyInt, Num::I(i)) => (i as i8).to_be_bytes().to_vec(),
        (CqlType::TinyInt, Num::F(f)) => (f as i8).to_be_bytes().to_vec(),
        (CqlType::SmallInt, Num::I(i)) => (i as i16).to_be_bytes().to_vec(),
        (CqlType::SmallInt, Num::F(f)) => (f as i16).to_be_bytes().to_vec(),
        (CqlType::Int, Num::I(i)) => (i as i32).to_be_bytes().to_vec(),
        (CqlType::Int, Num::F(f)) => (f as i32).to_be_bytes().to_vec(),
        (CqlType::BigInt, Num::I(i)) => i.to_be_bytes().to_vec(),
        (CqlType::BigInt, Num::F(f)) => (f as i64).to_be_bytes().to_vec(),
        (CqlType::Float, Num::I(i)) => (i as f32).to_be_bytes().to_vec(),
        (CqlType::Float, Num::F(f)) => (f as f32).to_be_bytes().to_vec(),
        (CqlType::Double, Num::I(i)) => (i as f64).to_be_bytes().to_vec(),
        (CqlType::Double, Num::F(f)) => f.to_be_bytes().to_vec(),
        _ => {
            return Err(format!(
                "{} cannot be cast to {}",
                from.cql_name(),
                to.cql_name()
            ));
        }
    };
    Ok(Some(Bytes::from(out)))
}

enum Num {
    I(i64),
    F(f64),
}

fn number(ty: &CqlType, v: &[u8]) -> Result<Num, String> {
    let bad = || format!("Invalid {} value", ty.cql_name());
    Ok(match ty {
        CqlType::TinyInt => Num::I(i64::from(i8::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        CqlType::SmallInt => Num::I(i64::from(i16::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        CqlType::Int => Num::I(i64::from(i32::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        CqlType::BigInt | CqlType::Counter => {
            Num::I(i64::from_be_bytes(v.try_into().map_err(|_| bad())?))
        }
        CqlType::Float => Num::F(f64::from(f32::from_be_bytes(
            v.try_into().map_err(|_| bad())?,
        ))),
        CqlType::Double => Num::F(f64::from_be_bytes(v.try_into().map_err(|_| bad())?)),
        _ => return Err(bad()),
    })
}

/// Java's `Double.toString` for the common cases: `1.0`, `1.5`, `1.0E10`.
fn java_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = f.abs();
    if a == 0.0 || (1e-3..1e7).contains(&a) {
        let s = format!("{f}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let s = format!("{f:E}");
        match s.split_once('E') {
            Some((m, e)) if !m.contains('.') => format!("{m}.0E{e}"),
            _ => s,
        }
    }
}

fn to_text(ty: &CqlType, v: &[u8]) -> Result<String, String> {
    let bad = || format!("Invalid {} value", ty.cql_name());
    Ok(match ty {
        CqlType::Text | CqlType::Ascii => String::from_utf8(v.to_vec()).map_err(|_| bad())?,
        CqlType::Boolean => (v.first() != Some(&0)).to_string(),
        CqlType::Float => {
            let f = f32::from_be_bytes(v.try_into().map_err(|_| bad())?);
            // through the shortest f32 text, so 1.1f is "1.1", as in Java
            java_float(format!("{f}").parse::<f64>().unwrap_or(f64::from(f)))
        }
        CqlType::Double => java_float(f64::from_be_bytes(v.try_into().map_err(|_| bad())?)),
        t if is_number(t) => match number(t, v)? {
            Num::I(i) => i.to_string(),
            Num::F(f) => java_float(f),
        },
        CqlType::Uuid | CqlType::TimeUuid => {
            let u: &[u8; 16] = v.try_into().map_err(|_| bad())?;
            crate::types::format_uuid(u)
        }
        CqlType::Timestamp => {
            let ms = millis(ty, v)?;
            let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
            let t = ms.rem_euclid(DAY_MS);
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                t / 3_600_000,
                t / 60_000 % 60,
                t / 1000 % 60,
                t % 1000
            )
        }
        CqlType::Date => {
            let (y, m, d) = civil_from_days(millis(ty, v)?.div_euclid(DAY_MS));
            format!("{y:04}-{m:02}-{d:02}")
        }
        CqlType::Inet => match v.len() {
            4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(v).map_err(|_| bad())?).to_string(),
            16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(v).map_err(|_| bad())?).to_string(),
            _ => return Err(bad()),
        },
        other => return Err(format!("{} cannot be cast to text", other.cql_name())),
    })
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_conversions_round_trip() {
        let ms = 1_577_836_800_123; // 2020-01-01T00:00:00.123Z
        let min = timeuuid_at(ms, false);
        assert_eq!(millis(&CqlType::TimeUuid, &min).unwrap(), ms);
        assert_eq!(
            to_text(&CqlType::Timestamp, &ms.to_be_bytes()).unwrap(),
            "2020-01-01T00:00:00.123Z"
        );
        let date = date_of_ms(ms);
        assert_eq!(
            to_text(&CqlType::Date, &date.to_be_bytes()).unwrap(),
            "2020-01-01"
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(java_float(1.0), "1.0");
        assert_eq!(java_float(2.5), "2.5");
        assert_eq!(java_float(1e10), "1.0E10");
    }

    #[test]
    fn unknown_functions_and_signatures() {
        assert_eq!(resolve("nope", &[]).unwrap_err(), "Unknown function 'nope'");
        assert!(
            resolve("todate", &[CqlType::Int])
                .unwrap_err()
                .contains("none of its type signatures match")
        );
        assert_eq!(
            resolve("blobastext", &[CqlType::Blob]).unwrap(),
            (vec![CqlType::Blob], CqlType::Text)
        );
    }
}
