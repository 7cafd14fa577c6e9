//! `rrpc ls`, `rrpc call`, `rrpc ping`.

use std::time::{Duration, Instant};

use rrpc_core::{MemberKind, Value};

use super::json::{parse_arg, to_json};
use super::{connect, CliError};

/// Reads the attributes of a dotted path from the root.
async fn walk(root: rrpc_core::Proxy, path: &[&str]) -> Result<Value, CliError> {
    let mut here = Value::Proxy(root);
    let mut walked = String::new();
    for name in path {
        let Value::Proxy(obj) = &here else {
            return Err(format!(
                "`{walked}` is a {} value, it has no `{name}`",
                here.type_name()
            )
            .into());
        };
        here = obj.get(name).await.map_err(|e| {
            format!(
                "reading `{walked}{}{name}`: {e}",
                if walked.is_empty() { "" } else { "." }
            )
        })?;
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(name);
    }
    Ok(here)
}

fn split(path: Option<&str>) -> Vec<&str> {
    path.map(|p| p.split('.').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

pub(super) async fn ls(addr: &str, path: Option<&str>, timeout: Duration) -> Result<(), CliError> {
    let conn = connect(addr, timeout).await?;
    let target = walk(conn.root(), &split(path)).await?;
    match target {
        Value::Proxy(obj) => {
            let members = obj.members().await?;
            let width = members.iter().map(|m| m.name.len()).max().unwrap_or(0);
            println!("{} ({} members)", obj.type_name(), members.len());
            for m in members {
                let kind = match (m.kind, m.writable) {
                    (MemberKind::Method, _) => "method",
                    (MemberKind::Attribute, true) => "attr rw",
                    (MemberKind::Attribute, false) => "attr",
                };
                println!("  {:<width$}  {kind:<7}  {}", m.name, m.signature);
            }
        }
        data => println!("{}", serde_json::to_string_pretty(&to_json(&data))?),
    }
    conn.close();
    Ok(())
}

pub(super) async fn call(
    addr: &str,
    path: &str,
    args: &[String],
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<(), CliError> {
    let parts = split(Some(path));
    let Some((method, owners)) = parts.split_last() else {
        return Err("call: empty PATH".into());
    };
    let conn = connect(addr, connect_timeout).await?;
    let owner = match walk(conn.root(), owners).await? {
        Value::Proxy(p) => p,
        other => {
            return Err(format!(
                "`{}` is a {} value, not an object",
                owners.join("."),
                other.type_name()
            )
            .into())
        }
    };
    let args: Vec<Value> = args
        .iter()
        .map(|a| parse_arg(a))
        .collect::<Result<_, _>>()?;
    let result = owner
        .call(method, args)
        .timeout(timeout)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&to_json(&result))?);
    conn.close();
    Ok(())
}

pub(super) async fn ping(addr: &str, count: u32, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    let conn = connect(addr, timeout).await?;
    println!(
        "connected to {} in {:.2} ms",
        conn.peer(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let root = conn.root();
    let mut times = Vec::new();
    for seq in 1..=count.max(1) {
        let t = Instant::now();
        root.members().await?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!("round trip {seq}: {ms:.3} ms");
        times.push(ms);
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    let avg = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "{} round trips: min {min:.3} ms, avg {avg:.3} ms, max {max:.3} ms",
        times.len()
    );
    conn.close();
    Ok(())
}
