//! Slurm: `sbatch --parsable`, `squeue --json` (or `squeue -h -o`), `scancel`.
//!
//! The JSON of `squeue --json` changed between Slurm versions: 22.05 gives
//! `job_state` as a string and numbers as numbers; 23.02 and later give
//! `job_state` as a list of flags and many numbers as
//! `{"set": …, "infinite": …, "number": …}` objects, and `exit_code` as
//! `{"status": […], "return_code": …}`. The parser accepts all of these.

use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::Value;

use super::runner::CommandRunner;
use super::script;
use super::spec::{JobId, JobInfo, JobQuery, JobSpec, JobState};
use super::{Batch, BatchError};

/// How `squeue` is asked for the job list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqueueFormat {
    /// `--json`, falling back to the text format when this Slurm has none.
    Auto,
    /// Only `squeue --json`.
    Json,
    /// Only `squeue -h -o …`.
    Text,
}

/// How to reach Slurm.
#[derive(Debug, Clone)]
pub struct SlurmConfig {
    /// Runs the commands (prefix, `SLURM_CONF`, timeout).
    pub runner: CommandRunner,
    /// How to list jobs.
    pub format: SqueueFormat,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            runner: CommandRunner::new(),
            format: SqueueFormat::Auto,
        }
    }
}

/// The Slurm backend.
#[derive(Debug)]
pub struct SlurmBackend {
    runner: CommandRunner,
    format: SqueueFormat,
    /// In `Auto` mode: 0 = not known yet, 1 = JSON works, 2 = text only.
    learned: AtomicU8,
}

const TEXT_FORMAT: &str = "%i|%T|%P|%j|%k";

impl SlurmBackend {
    /// A backend with this configuration.
    pub fn new(config: SlurmConfig) -> Self {
        SlurmBackend {
            runner: config.runner,
            format: config.format,
            learned: AtomicU8::new(0),
        }
    }

    /// The `sbatch` arguments for `spec` (the script goes to stdin).
    pub fn sbatch_args(spec: &JobSpec) -> Vec<String> {
        let mut a = vec!["--parsable".to_owned(), "-J".into(), spec.name.clone()];
        if let Some(q) = &spec.queue {
            a.push(format!("--partition={q}"));
        }
        if let Some(n) = spec.resources.nodes {
            a.push(format!("--nodes={n}"));
        }
        if let Some(c) = spec.resources.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = spec.resources.memory_mib {
            a.push(format!("--mem={m}M"));
        }
        if let Some(t) = spec.wall_time {
            a.push(format!("--time={}", t.as_secs().div_ceil(60).max(1)));
        }
        let id = if spec.array.is_some() { "%A" } else { "%j" };
        match &spec.stdout {
            Some(p) => a.push(format!("--output={}", script::placeholders(p, id, "%a"))),
            None => a.push("--output=/dev/null".into()),
        }
        if let Some(p) = &spec.stderr {
            a.push(format!("--error={}", script::placeholders(p, id, "%a")));
        }
        if let Some(d) = &spec.workdir {
            a.push(format!("--chdir={}", d.display()));
        }
        if let Some(n) = spec.array {
            a.push(format!("--array=0-{}", n - 1));
        }
        if !spec.after_ok.is_empty() {
            let ids: Vec<&str> = spec.after_ok.iter().map(JobId::as_str).collect();
            a.push(format!("--dependency=afterok:{}", ids.join(":")));
        }
        if let Some(c) = &spec.comment {
            a.push(format!("--comment={c}"));
        }
        a
    }

    async fn list_json(&self) -> Result<Vec<JobInfo>, BatchError> {
        let args = vec!["--json".to_owned(), "--states=all".into()];
        let out = self.runner.run("squeue", &args, None).await?;
        parse_json(&out.stdout).map_err(|what| BatchError::Parse {
            command: self.runner.display("squeue", &args),
            what,
            output: out.excerpt(),
        })
    }

    async fn list_text(&self) -> Result<Vec<JobInfo>, BatchError> {
        let args = vec![
            "-h".to_owned(),
            "--states=all".into(),
            "-o".into(),
            TEXT_FORMAT.into(),
        ];
        let out = self.runner.run("squeue", &args, None).await?;
        parse_text(&out.stdout).map_err(|what| BatchError::Parse {
            command: self.runner.display("squeue", &args),
            what,
            output: out.excerpt(),
        })
    }
}

impl Batch for SlurmBackend {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    async fn submit(&self, spec: &JobSpec) -> Result<JobId, BatchError> {
        spec.validate()?;
        let body = script::render(spec, "${SLURM_ARRAY_TASK_ID:-0}", false);
        let args = Self::sbatch_args(spec);
        let out = self
            .runner
            .run("sbatch", &args, Some(body.as_bytes()))
            .await?;
        parse_sbatch(&out.stdout).ok_or_else(|| BatchError::Parse {
            command: self.runner.display("sbatch", &args),
            what: "expected a job id (`42` or `42;cluster`)".into(),
            output: out.excerpt(),
        })
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<JobInfo>, BatchError> {
        let jobs = match (self.format, self.learned.load(Ordering::Relaxed)) {
            (SqueueFormat::Json, _) | (SqueueFormat::Auto, 1) => self.list_json().await?,
            (SqueueFormat::Text, _) | (SqueueFormat::Auto, 2) => self.list_text().await?,
            (SqueueFormat::Auto, _) => match self.list_json().await {
                Ok(jobs) => {
                    self.learned.store(1, Ordering::Relaxed);
                    jobs
                }
                Err(json_err) => match self.list_text().await {
                    Ok(jobs) => {
                        tracing::info!(error = %json_err, "squeue --json unusable; using the text format");
                        self.learned.store(2, Ordering::Relaxed);
                        jobs
                    }
                    // Both failed: the JSON error says more about the cause.
                    Err(_) => return Err(json_err),
                },
            },
        };
        Ok(jobs.into_iter().filter(|j| query.matches(j)).collect())
    }

    async fn cancel(&self, id: &JobId) -> Result<(), BatchError> {
        self.runner
            .run("scancel", std::slice::from_ref(&id.0), None)
            .await?;
        Ok(())
    }
}

/// `42` or `42;cluster` → `42`.
fn parse_sbatch(stdout: &str) -> Option<JobId> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let id = line.split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| JobId(id.to_owned()))
}

/// Maps a Slurm state name (`RUNNING`, `CANCELLED+`, `CANCELLED by 0`) to a [`JobState`].
pub fn map_state(raw: &str) -> JobState {
    let base = raw
        .split([' ', '+'])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    match base.as_str() {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" => JobState::Pending,
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STAGE_OUT" | "SIGNALING" | "RESIZING"
        | "STOPPED" => JobState::Running,
        "COMPLETED" => JobState::Completed,
        "FAILED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "BOOT_FAIL" | "DEADLINE"
        | "PREEMPTED" | "SPECIAL_EXIT" | "REVOKED" => JobState::Failed,
        "CANCELLED" => JobState::Cancelled,
        _ => JobState::Unknown,
    }
}

/// A number in any of Slurm's spellings: `5`, `"5"`, `{"set": true,
/// "infinite": false, "number": 5}`. Unset or infinite gives `None`.
fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Object(o) => {
            if o.get("set").and_then(Value::as_bool) == Some(false)
                || o.get("infinite").and_then(Value::as_bool) == Some(true)
            {
                return None;
            }
            o.get("number").and_then(number)
        }
        _ => None,
    }
}

/// The job state in any of Slurm's spellings: `"RUNNING"`, `["RUNNING",
/// "COMPLETING"]`, `{"current": [...]}`. Returns the raw text (flags joined
/// with `+`) and the base state.
fn state_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let words: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            (!words.is_empty()).then(|| words.join("+"))
        }
        Value::Object(o) => o.get("current").and_then(state_of),
        _ => None,
    }
}

/// The exit code. Slurm 22.05 gives the raw wait status as a number (exit 3
/// is `768`; a signal shows in the low bits); later versions give
/// `{"status": […], "return_code": 3 | {"number": 3, …}}`.
fn exit_code_of(v: &Value) -> Option<i32> {
    match v {
        Value::Object(o) if o.contains_key("return_code") => o
            .get("return_code")
            .and_then(number)
            .and_then(|n| i32::try_from(n).ok()),
        other => {
            let status = number(other)?;
            let signal = status & 0x7f;
            if signal != 0 {
                Some(128 + i32::try_from(signal).ok()?)
            } else {
                i32::try_from((status >> 8) & 0xff).ok()
            }
        }
    }
}

fn nonempty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Parses `squeue --json` output.
pub fn parse_json(text: &str) -> Result<Vec<JobInfo>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(errors) = doc.get("errors").and_then(Value::as_array) {
        if let Some(first) = errors.first() {
            return Err(format!("squeue reported an error: {first}"));
        }
    }
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| "no \"jobs\" list".to_owned())?;
    let mut out = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let id = job
            .get("job_id")
            .and_then(number)
            .ok_or_else(|| format!("job {i} has no job_id"))?;
        let raw_state = job
            .get("job_state")
            .and_then(state_of)
            .ok_or_else(|| format!("job {id} has no job_state"))?;
        let array_job = job.get("array_job_id").and_then(number).filter(|&a| a > 0);
        let array_task = job
            .get("array_task_id")
            .and_then(number)
            .and_then(|t| u32::try_from(t).ok());
        let (job_id, array) = match (array_job, array_task) {
            (Some(parent), Some(index)) => (
                JobId(format!("{parent}_{index}")),
                Some((JobId(parent.to_string()), index)),
            ),
            // A pending array not yet split into tasks (`42_[0-3]`): its id.
            (Some(parent), None) => (JobId(parent.to_string()), None),
            _ => (JobId(id.to_string()), None),
        };
        let state = map_state(&raw_state);
        out.push(JobInfo {
            id: job_id,
            name: nonempty(job.get("name")).unwrap_or_default(),
            state,
            raw_state,
            queue: nonempty(job.get("partition")),
            array,
            exit_code: if state.is_active() {
                None
            } else {
                job.get("exit_code").and_then(exit_code_of)
            },
            comment: nonempty(job.get("comment")),
        });
    }
    Ok(out)
}

/// Parses `squeue -h -o '%i|%T|%P|%j|%k'` output.
pub fn parse_text(text: &str) -> Result<Vec<JobInfo>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.splitn(5, '|').collect();
        let [id, state, partition, name, comment] = f[..] else {
            return Err(format!("expected 5 fields separated by '|' in {line:?}"));
        };
        let id = id.trim();
        if id.is_empty() || !id.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("bad job id in {line:?}"));
        }
        let array = id
            .split_once('_')
            .and_then(|(p, i)| i.parse::<u32>().ok().map(|i| (JobId(p.to_owned()), i)));
        let id = match id.split_once("_[") {
            Some((parent, _)) => parent,
            None => id,
        };
        let comment = comment.trim();
        out.push(JobInfo {
            id: JobId(id.to_owned()),
            name: name.to_owned(),
            state: map_state(state.trim()),
            raw_state: state.trim().to_owned(),
            queue: Some(partition.trim().to_owned()).filter(|p| !p.is_empty()),
            array,
            exit_code: None,
            comment: Some(comment.to_owned()).filter(|c| !c.is_empty() && c != "(null)"),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_output() {
        assert_eq!(parse_sbatch("42\n"), Some(JobId("42".into())));
        assert_eq!(parse_sbatch("43;cluster\n"), Some(JobId("43".into())));
        assert_eq!(parse_sbatch("Submitted batch job 4\n"), None);
        assert_eq!(parse_sbatch(""), None);
    }

    #[test]
    fn json_of_slurm_22_05() {
        let doc = r#"{"meta":{"plugin":{"type":"openapi/v0.0.38"}},"errors":[],"jobs":[
          {"job_id":7,"name":"a","job_state":"PENDING","partition":"exp","comment":"",
           "array_job_id":0,"array_task_id":null,"exit_code":0},
          {"job_id":9,"name":"arr","job_state":"COMPLETED","partition":"exp",
           "array_job_id":8,"array_task_id":1,"exit_code":0},
          {"job_id":10,"name":"bad","job_state":"FAILED","partition":"cluster",
           "array_job_id":0,"exit_code":768}]}"#;
        let jobs = parse_json(doc).unwrap();
        assert_eq!(jobs[0].id.0, "7");
        assert_eq!(jobs[0].state, JobState::Pending);
        assert_eq!(jobs[0].comment, None);
        assert_eq!(jobs[1].id.0, "8_1");
        assert_eq!(jobs[1].array, Some((JobId("8".into()), 1)));
        assert_eq!(jobs[2].state, JobState::Failed);
        assert_eq!(jobs[2].exit_code, Some(3));
    }

    #[test]
    fn json_of_slurm_23_and_later() {
        let doc = r#"{"jobs":[
          {"job_id":11,"name":"b","job_state":["RUNNING","COMPLETING"],"partition":"exp",
           "array_job_id":{"set":true,"infinite":false,"number":0},
           "array_task_id":{"set":false,"infinite":false,"number":0},
           "exit_code":{"status":["PENDING"],"return_code":{"set":false,"infinite":false,"number":0}},
           "comment":"vm-launch"},
          {"job_id":12,"name":"c","job_state":["CANCELLED"],"partition":"exp",
           "array_job_id":{"set":true,"infinite":false,"number":12},
           "array_task_id":{"set":true,"infinite":false,"number":2},
           "exit_code":{"status":["SIGNALED"],"return_code":{"set":true,"infinite":false,"number":0}}}],
          "errors":[],"warnings":[]}"#;
        let jobs = parse_json(doc).unwrap();
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[0].raw_state, "RUNNING+COMPLETING");
        assert_eq!(jobs[0].id.0, "11");
        assert_eq!(jobs[0].comment.as_deref(), Some("vm-launch"));
        assert_eq!(jobs[1].id.0, "12_2");
        assert_eq!(jobs[1].state, JobState::Cancelled);
        assert_eq!(jobs[1].exit_code, Some(0));
    }

    #[test]
    fn json_errors_are_reported() {
        assert!(parse_json("not json").is_err());
        assert!(parse_json(r#"{"meta":{}}"#).is_err());
        assert!(parse_json(r#"{"jobs":[{"name":"x"}]}"#).is_err());
        assert!(parse_json(r#"{"jobs":[],"errors":[{"error":"boom"}]}"#).is_err());
    }

    #[test]
    fn text_format() {
        let jobs = parse_text(
            "5|RUNNING|exp|a|(null)\n6_1|COMPLETED|cluster|arr|x|y\n7_[0-3]|PENDING|exp|p|\n",
        )
        .unwrap();
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[0].comment, None);
        assert_eq!(jobs[1].array, Some((JobId("6".into()), 1)));
        assert_eq!(jobs[1].comment.as_deref(), Some("x|y"));
        assert_eq!(jobs[2].id.0, "7");
        assert!(parse_text("garbage\n").is_err());
    }

    #[test]
    fn states() {
        assert_eq!(map_state("CANCELLED by 0"), JobState::Cancelled);
        assert_eq!(map_state("TIMEOUT"), JobState::Failed);
        assert_eq!(map_state("WEIRD"), JobState::Unknown);
    }
}
