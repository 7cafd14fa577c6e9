//! `sys`: facts about the server's host (hostname, user, OS, CPUs, memory,
//! load, uptime, UTC time to spot clock skew, the server's version), its
//! environment as a remote map (`sys.env`, the base environment of every
//! process `proc` starts), and a remote mutable list (`sys.path`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rrpc_core::{Args, CallContext, Member, Remote, RemoteError, Reply, Value};

use super::RemoteMap;
use crate::demo::RemoteList;

/// The system service.
#[derive(Debug)]
pub struct Sys {
    env: Arc<RemoteMap>,
    path: Arc<RemoteList>,
}

impl Default for Sys {
    fn default() -> Self {
        Sys::new()
    }
}

const FACTS: &[(&str, &str)] = &[
    ("hostname", "str"),
    ("user", "{name, uid, gid}"),
    ("pid", "int"),
    ("os", "{name, family, arch, kernel}"),
    ("cpu_count", "int"),
    ("memory", "{total, available, free} in bytes"),
    ("load", "[1 min, 5 min, 15 min]"),
    ("uptime", "seconds"),
    ("time", "{unix, utc}"),
    ("version", "str"),
    ("info", "map of every fact"),
];

impl Sys {
    /// A system service whose environment starts as the server's own.
    pub fn new() -> Sys {
        Sys {
            env: Arc::new(RemoteMap::of_strings(
                "env",
                std::env::vars_os()
                    .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                    // The server's own secret is never handed out, nor
                    // passed on to the processes `proc` starts.
                    .filter(|(k, _)| k != rrpc_core::handshake::SECRET_ENV),
            )),
            path: Arc::new(RemoteList::new("path", Vec::new())),
        }
    }

    /// The environment map (shared with `proc`).
    pub fn env(&self) -> Arc<RemoteMap> {
        self.env.clone()
    }

    /// The remote `sys.path` list (also the root's `path`).
    pub fn path(&self) -> Arc<RemoteList> {
        self.path.clone()
    }

    fn fact(&self, name: &str) -> Option<Result<Value, RemoteError>> {
        Some(Ok(match name {
            "hostname" => hostname().into(),
            "user" => user(),
            "pid" => std::process::id().into(),
            "os" => os(),
            "cpu_count" => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .into(),
            "memory" => memory(),
            "load" => load(),
            "uptime" => uptime().into(),
            "time" => time(),
            "version" => env!("CARGO_PKG_VERSION").into(),
            "info" => Value::Map(
                FACTS
                    .iter()
                    .filter(|(n, _)| *n != "info")
                    .filter_map(|(n, _)| Some(((*n).into(), self.fact(n)?.ok()?)))
                    .collect(),
            ),
            _ => return None,
        }))
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn user() -> Value {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| uid.to_string());
    Value::Map(vec![
        ("name".into(), name.into()),
        ("uid".into(), uid.as_raw().into()),
        ("gid".into(), nix::unistd::getgid().as_raw().into()),
    ])
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn os() -> Value {
    Value::Map(vec![
        ("name".into(), std::env::consts::OS.into()),
        ("family".into(), std::env::consts::FAMILY.into()),
        ("arch".into(), std::env::consts::ARCH.into()),
        (
            "kernel".into(),
            read_trimmed("/proc/sys/kernel/osrelease").into(),
        ),
    ])
}

/// `/proc/meminfo` in bytes (`None` values where it cannot be read).
fn memory() -> Value {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim_start_matches(':')
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    Value::Map(vec![
        ("total".into(), field("MemTotal").into()),
        ("available".into(), field("MemAvailable").into()),
        ("free".into(), field("MemFree").into()),
    ])
}

fn load() -> Value {
    let text = read_trimmed("/proc/loadavg").unwrap_or_default();
    Value::List(
        text.split_whitespace()
            .take(3)
            .map(|x| x.parse::<f64>().map_or(Value::Unit, Value::Float))
            .collect(),
    )
}

fn uptime() -> Option<f64> {
    read_trimmed("/proc/uptime")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn time() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Value::Map(vec![
        ("unix".into(), now.as_secs_f64().into()),
        (
            "utc".into(),
            utc_string(now.as_secs(), now.subsec_millis()).into(),
        ),
    ])
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a Unix time (proleptic Gregorian).
pub fn utc_string(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Remote for Sys {
    fn type_name(&self) -> &str {
        "sys"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, args: Args) -> Reply {
        if !args.is_empty() {
            return Reply::err(RemoteError::bad_argument(format!(
                "sys.{method} takes no arguments"
            )));
        }
        match self.fact(method) {
            Some(result) => Reply::Ready(result),
            None => Reply::err(RemoteError::no_such_method("sys", method)),
        }
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "env" => Reply::ready(Value::Object(self.env.clone())),
            "path" => Reply::ready(Value::Object(self.path.clone())),
            _ => match self.fact(name) {
                Some(result) => Reply::Ready(result),
                None => Reply::err(RemoteError::no_such_attribute("sys", name)),
            },
        }
    }

    fn members(&self) -> Vec<Member> {
        let mut members: Vec<Member> = FACTS
            .iter()
            .map(|(name, ty)| Member::method(*name, format!("{name}() -> {ty}")))
            .collect();
        members.push(Member::attribute(
            "env",
            "map (the environment of new processes)",
        ));
        members.push(Member::attribute("path", "list"));
        members
    }
}

#[cfg(test)]
mod tests {
    use super::utc_string;

    #[test]
    fn utc_strings_are_right() {
        assert_eq!(utc_string(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_string(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc_string(1_700_000_000, 0), "2023-11-14T22:13:20.000Z");
    }
}
