//! PostgreSQL steps with tokio-postgres: `query` through the extended protocol
//! (one statement, typed rows), `exec` through the simple protocol (several
//! statements allowed) or, with parameters, the extended one.
//!
//! Values are decoded from the binary format by type: booleans, integers, floats,
//! `numeric` (see [`super::decimal`]), text types, `json`/`jsonb`, `uuid`, `bytea`
//! (`\x` hex), dates and times (PostgreSQL's text form, timestamps with time zone in
//! UTC as `+00`), arrays (lists) and domains (their base type). Other types (interval,
//! ranges, geometry) come back as their text when it is UTF-8, else as `\x` hex:
//! cast them to `text` in SQL to read them.

use std::net::SocketAddr;

use serde_json::Value;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, Kind, ToSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::decimal::{decimal, float, float32};
use super::{ClientError, Credentials, Operation, SqlArg};

pub(super) async fn run(
    addr: SocketAddr,
    credentials: &Credentials,
    op: &Operation,
) -> Result<String, ClientError> {
    session(addr, credentials, async |client| match op {
        Operation::Query { sql, args } => query(client, sql, args).await,
        Operation::Exec { sql, args } => exec(client, sql, args).await,
        other => Err(ClientError::Unsupported {
            protocol: "postgres".into(),
            operation: other.name(),
        }),
    })
    .await
}

pub(super) async fn ping(addr: SocketAddr, credentials: &Credentials) -> Result<(), ClientError> {
    session(addr, credentials, async |client| {
        client.simple_query("SELECT 1").await.map_err(error)?;
        Ok(())
    })
    .await
}

/// Logs in, runs `work` while driving the connection, then says goodbye.
async fn session<T>(
    addr: SocketAddr,
    credentials: &Credentials,
    work: impl AsyncFnOnce(&Client) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let stream = super::connect(addr).await?;
    let user = credentials.user.as_deref().unwrap_or("postgres");
    let mut config = tokio_postgres::Config::new();
    config
        .user(user)
        .dbname(credentials.database.as_deref().unwrap_or(user))
        .application_name("faultbox")
        .ssl_mode(SslMode::Disable);
    if let Some(p) = &credentials.password {
        config.password(p);
    }
    let (client, connection) = config.connect_raw(stream, NoTls).await.map_err(error)?;
    let mut connection = std::pin::pin!(connection);
    let result = {
        let work = std::pin::pin!(work(&client));
        tokio::select! {
            r = work => r,
            c = &mut connection => Err(match c {
                Err(e) => error(e),
                Ok(()) => ClientError::Protocol("the server closed the connection".into()),
            }),
        }
    };
    // Dropping the client sends Terminate; the connection then ends on its own.
    drop(client);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), connection).await;
    result
}

/// The server's error as `SQLSTATE: message`, else the driver's description with
/// its cause (`error communicating with the server: Connection reset by peer`).
fn error(e: tokio_postgres::Error) -> ClientError {
    if let Some(db) = e.as_db_error() {
        return ClientError::Server(format!("{}: {}", db.code().code(), db.message()));
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    ClientError::Driver(text)
}

async fn query(client: &Client, sql: &str, args: &[SqlArg]) -> Result<String, ClientError> {
    let params: Vec<TextArg> = args.iter().map(TextArg::from).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = client.query(sql, &refs).await.map_err(error)?;
    let columns: Vec<String> = match rows.first() {
        Some(r) => r.columns().iter().map(|c| c.name().to_string()).collect(),
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut values = Vec::with_capacity(row.len());
        for (i, c) in row.columns().iter().enumerate() {
            let raw: Raw = row.try_get(i).map_err(error)?;
            values.push(match raw.0 {
                None => Value::Null,
                Some(bytes) => decode(c.type_(), bytes),
            });
        }
        out.push(values);
    }
    Ok(super::rows_json(&columns, &out))
}

async fn exec(client: &Client, sql: &str, args: &[SqlArg]) -> Result<String, ClientError> {
    if !args.is_empty() {
        let params: Vec<TextArg> = args.iter().map(TextArg::from).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let n = client.execute(sql, &refs).await.map_err(error)?;
        return Ok(super::rows_affected(n));
    }
    let messages = client.simple_query(sql).await.map_err(error)?;
    let n = messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => *n,
            _ => 0,
        })
        .sum();
    Ok(super::rows_affected(n))
}

/// A parameter sent in the text format: the server parses it as the type the
/// statement infers, as it would a literal, so `args=[1]` fits an `int4`, a
/// `bigint` or a `text` parameter alike.
#[derive(Debug)]
struct TextArg(Option<String>);

impl From<&SqlArg> for TextArg {
    fn from(a: &SqlArg) -> TextArg {
        TextArg(match a {
            SqlArg::Null => None,
            SqlArg::Bool(b) => Some(b.to_string()),
            SqlArg::Int(i) => Some(i.to_string()),
            SqlArg::Float(f) => Some(if f.is_nan() {
                "NaN".into()
            } else if f.is_infinite() {
                if *f > 0.0 { "Infinity" } else { "-Infinity" }.into()
            } else {
                f.to_string()
            }),
            SqlArg::Text(t) => Some(t.clone()),
        })
    }
}

impl ToSql for TextArg {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            None => Ok(tokio_postgres::types::IsNull::Yes),
            Some(t) => {
                out.extend_from_slice(t.as_bytes());
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A column's raw binary value, whatever its type; decoded by [`decode`].
struct Raw<'a>(Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

// Type OIDs of the built-in types decoded by value (pg_type.dat).
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const CHAR: u32 = 18;
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const OID: u32 = 26;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const DATE: u32 = 1082;
const TIME: u32 = 1083;
const TIMESTAMP: u32 = 1114;
const TIMESTAMPTZ: u32 = 1184;
const NUMERIC: u32 = 1700;
const UUID: u32 = 2950;
const JSONB: u32 = 3802;

/// One binary value of type `ty` as JSON. A type without a decoder here is text
/// when its binary form is (enums, `citext`, `xml`), else hex.
fn decode(ty: &Type, raw: &[u8]) -> Value {
    decode_known(ty, raw).unwrap_or_else(|| match std::str::from_utf8(raw) {
        Ok(t) if !t.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
            Value::String(t.to_string())
        }
        _ => Value::String(super::hex(raw, "\\x")),
    })
}

fn decode_known(ty: &Type, raw: &[u8]) -> Option<Value> {
    let be = |n: usize| raw.get(..n).filter(|_| raw.len() == n);
    Some(match ty.oid() {
        BOOL => Value::Bool(*be(1)?.first()? != 0),
        INT2 => Value::from(i16::from_be_bytes(be(2)?.try_into().ok()?)),
        INT4 => Value::from(i32::from_be_bytes(be(4)?.try_into().ok()?)),
        INT8 => Value::from(i64::from_be_bytes(be(8)?.try_into().ok()?)),
        OID => Value::from(u32::from_be_bytes(be(4)?.try_into().ok()?)),
        FLOAT4 => float32(f32::from_be_bytes(be(4)?.try_into().ok()?)),
        FLOAT8 => float(f64::from_be_bytes(be(8)?.try_into().ok()?)),
        NUMERIC => decimal(&numeric(raw)?),
        CHAR => Value::String(String::from_utf8_lossy(raw).into_owned()),
        JSON => serde_json::from_slice(raw).ok()?,
        JSONB => match raw.split_first()? {
            (1, rest) => serde_json::from_slice(rest).ok()?,
            _ => return None,
        },
        UUID => {
            let h = super::hex(be(16)?, "");
            Value::String(format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            ))
        }
        BYTEA => Value::String(super::hex(raw, "\\x")),
        DATE => Value::String(date(i32::from_be_bytes(be(4)?.try_into().ok()?))),
        TIME => Value::String(time_of_day(i64::from_be_bytes(be(8)?.try_into().ok()?))),
        TIMESTAMP => Value::String(timestamp(i64::from_be_bytes(be(8)?.try_into().ok()?), "")),
        TIMESTAMPTZ => Value::String(timestamp(
            i64::from_be_bytes(be(8)?.try_into().ok()?),
            "+00",
        )),
        _ => match ty.kind() {
            Kind::Array(member) => array(member, raw)?,
            Kind::Domain(base) => decode_known(base, raw)?,
            _ => return None,
        },
    })
}

/// A binary array: `ndim`, a null flag, the element type, `(length, lower bound)`
/// per dimension, then each element as a length (-1 for NULL) and its bytes.
fn array(member: &Type, raw: &[u8]) -> Option<Value> {
    let mut r = Reader(raw);
    let ndim = usize::try_from(r.i32()?).ok()?;
    r.i32()?; // has nulls
    r.i32()?; // element type
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(r.i32()?).ok()?);
        r.i32()?; // lower bound
    }
    if dims.is_empty() {
        return Some(Value::Array(Vec::new()));
    }
    let total: usize = dims.iter().product();
    let mut flat = Vec::with_capacity(total.min(1 << 16));
    for _ in 0..total {
        let len = r.i32()?;
        flat.push(if len < 0 {
            Value::Null
        } else {
            decode(member, r.take(usize::try_from(len).ok()?)?)
        });
    }
    // Nest from the innermost dimension out.
    for &d in dims[1..].iter().rev() {
        if d == 0 {
            break;
        }
        flat = flat.chunks(d).map(|c| Value::Array(c.to_vec())).collect();
    }
    Some(Value::Array(flat))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
}

/// A binary `numeric` as decimal text: digit groups of base 10000, the first worth
/// 10000^weight, printed with `dscale` digits after the point.
fn numeric(raw: &[u8]) -> Option<String> {
    let mut r = Reader(raw);
    let ndigits = usize::try_from(r.i16()?).ok()?;
    let weight = i32::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = usize::from(r.u16()?);
    let mut groups = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        groups.push(r.i16()?);
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => return None,
    }
    let group = |i: i32| -> i16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| groups.get(i))
            .copied()
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        out.push_str(&group(0).to_string());
        for i in 1..=weight {
            out.push_str(&format!("{:04}", group(i)));
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `YYYY-MM-DD` for a day count from 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> String {
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => civil(i64::from(d) + PG_EPOCH_DAYS),
    }
}

/// `HH:MM:SS`, with the fraction when there is one (trailing zeros dropped, as
/// PostgreSQL prints it).
fn time_of_day(us: i64) -> String {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let mut out = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    out
}

fn timestamp(us: i64, zone: &str) -> String {
    match us {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        us => {
            let days = us.div_euclid(DAY_US);
            let rest = us.rem_euclid(DAY_US);
            format!(
                "{} {}{zone}",
                civil(days + PG_EPOCH_DAYS),
                time_of_day(rest)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, groups: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((groups.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for g in groups {
            v.extend(g.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        let n = |w, s, d, g: &[i16]| numeric(&numeric_bytes(w, s, d, g)).unwrap();
        assert_eq!(n(0, 0, 2, &[30]), "30.00");
        assert_eq!(n(1, 0, 0, &[12, 3456]), "123456");
        assert_eq!(n(0, 0x4000, 4, &[1, 2345]), "-1.2345");
        assert_eq!(n(-1, 0, 4, &[1]), "0.0001");
        assert_eq!(n(-2, 0, 6, &[1200]), "0.000012");
        assert_eq!(n(0, 0, 0, &[]), "0");
        assert_eq!(n(1, 0, 0, &[10]), "100000");
        assert_eq!(n(0, 0xC000, 0, &[]), "NaN");
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(8826), "2024-03-01");
        assert_eq!(time_of_day(3_723_500_000), "01:02:03.5");
        assert_eq!(
            timestamp(-1, "+00"),
            "1999-12-31 23:59:59.999999+00".to_string()
        );
        assert_eq!(timestamp(0, ""), "2000-01-01 00:00:00");
    }
}
