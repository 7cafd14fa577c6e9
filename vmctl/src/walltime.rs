//! How long a VM-launch job may run: `--wall-time`, or what the batch
//! system says.
//!
//! In order: an explicit wall time; `SLURM_JOB_END_TIME` (seconds since the
//! epoch, set by newer Slurm); the time left of `SLURM_JOB_ID` as `squeue -h
//! -j ID -o %L` prints it (`[days-]hours:minutes:seconds`, `UNLIMITED`);
//! otherwise no limit (the job runs until its VMs stop or it is signalled).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the job's time limit came from, and how much is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WallTime {
    /// Time left from now.
    pub left: Duration,
    /// Where it came from, for the log.
    pub source: String,
}

/// Finds the job's time left; `None` means no limit.
pub fn find(explicit: Option<Duration>) -> Result<Option<WallTime>, String> {
    if let Some(left) = explicit {
        return Ok(Some(WallTime {
            left,
            source: "--wall-time".into(),
        }));
    }
    if let Ok(end) = std::env::var("SLURM_JOB_END_TIME") {
        let end: u64 = end
            .trim()
            .parse()
            .map_err(|_| format!("SLURM_JOB_END_TIME={end:?} is not seconds since the epoch"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| format!("the clock is before 1970: {e}"))?
            .as_secs();
        return Ok(Some(WallTime {
            left: Duration::from_secs(end.saturating_sub(now)),
            source: format!("SLURM_JOB_END_TIME={end}"),
        }));
    }
    if let Ok(id) = std::env::var("SLURM_JOB_ID") {
        let id = id.trim().to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("SLURM_JOB_ID={id:?} is not a job id"));
        }
        let out = std::process::Command::new("squeue")
            .args(["-h", "-j", &id, "-o", "%L"])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `squeue -h -j {id} -o %L`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`squeue -h -j {id} -o %L` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        return parse_time_left(text.trim())
            .map(|left| {
                left.map(|left| WallTime {
                    left,
                    source: format!("squeue time left of job {id}"),
                })
            })
            .map_err(|e| format!("`squeue -h -j {id} -o %L`: {e}"));
    }
    Ok(None)
}

/// Parses Slurm's time format `[days-][[hours:]minutes:]seconds` (also a
/// bare number of minutes, as `--time` takes it); `UNLIMITED`,
/// `INFINITE` and `NOT_SET` mean no limit.
pub fn parse_time_left(text: &str) -> Result<Option<Duration>, String> {
    let t = text.trim();
    if matches!(t, "UNLIMITED" | "INFINITE" | "NOT_SET" | "Partition_Limit") {
        return Ok(None);
    }
    let bad = || format!("cannot read time {t:?} (want [days-]hours:minutes:seconds)");
    let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (num(d)?, rest),
        None => (0, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [m] if days == 0 => (0, num(m)?, 0),
        [h] => (num(h)?, 0, 0),
        [m, s] if days == 0 => (0, num(m)?, num(s)?),
        [h, m] => (num(h)?, num(m)?, 0),
        [h, m, s] => (num(h)?, num(m)?, num(s)?),
        _ => return Err(bad()),
    };
    let secs = days
        .checked_mul(86_400)
        .and_then(|d| d.checked_add(h.checked_mul(3600)?))
        .and_then(|x| x.checked_add(m.checked_mul(60)?))
        .and_then(|x| x.checked_add(s))
        .ok_or_else(bad)?;
    Ok(Some(Duration::from_secs(secs)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(parse_time_left("1-02:03:04").unwrap(), s(93_784));
        assert_eq!(parse_time_left("02:03:04").unwrap(), s(7_384));
        assert_eq!(parse_time_left("3:04").unwrap(), s(184));
        assert_eq!(parse_time_left("15").unwrap(), s(900));
        assert_eq!(parse_time_left("2-5").unwrap(), s(2 * 86_400 + 5 * 3600));
        assert_eq!(parse_time_left("UNLIMITED").unwrap(), None);
        assert_eq!(parse_time_left("NOT_SET").unwrap(), None);
        assert!(parse_time_left("soon").is_err());
        assert!(parse_time_left("1:2:3:4").is_err());
        assert!(parse_time_left("99999999999999999-0").is_err());
    }

    #[test]
    fn explicit_wall_time_wins() {
        let w = find(Some(Duration::from_secs(8))).unwrap().unwrap();
        assert_eq!(w.left, Duration::from_secs(8));
        assert_eq!(w.source, "--wall-time");
    }
}
