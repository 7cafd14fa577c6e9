//! PBS/Torque: `qsub SCRIPT`, `qstat -f`, `qdel`. Also drives the
//! `qsub`/`qstat`/`qdel` wrappers of Slurm's `slurm-wlm-torque`, which
//! print the same shapes (job ids without a `.server` suffix, finished jobs
//! in state `C` and no exit status).

use super::runner::CommandRunner;
use super::script::{self, has_placeholders, StageDir};
use super::spec::{JobId, JobInfo, JobQuery, JobSpec, JobState};
use super::{Batch, BatchError};

/// How to reach PBS.
#[derive(Debug, Clone)]
pub struct PbsConfig {
    /// Runs the commands.
    pub runner: CommandRunner,
    /// Where job scripts are written (qsub takes a file).
    pub stage: StageDir,
}

impl Default for PbsConfig {
    fn default() -> Self {
        PbsConfig {
            runner: CommandRunner::new(),
            stage: StageDir::default_for("pbs"),
        }
    }
}

/// The PBS backend.
#[derive(Debug)]
pub struct PbsBackend {
    config: PbsConfig,
}

/// `qstat` exits with this when it finds no job (Torque and the wrappers).
const QSTAT_NOTHING: i32 = 153;

impl PbsBackend {
    /// A backend with this configuration.
    pub fn new(config: PbsConfig) -> Self {
        PbsBackend { config }
    }

    /// The `qsub` arguments for `spec`, without the script path.
    pub fn qsub_args(spec: &JobSpec) -> Result<Vec<String>, BatchError> {
        let mut a = vec!["-N".to_owned(), spec.name.clone()];
        if let Some(q) = &spec.queue {
            a.extend(["-q".into(), q.clone()]);
        }
        let mut res = Vec::new();
        if let Some(n) = spec.resources.nodes {
            res.push(format!("nodes={n}"));
        }
        if let Some(c) = spec.resources.cpus {
            res.push(format!("ncpus={c}"));
        }
        if let Some(m) = spec.resources.memory_mib {
            res.push(format!("mem={m}mb"));
        }
        if let Some(t) = spec.wall_time {
            let s = t.as_secs().max(1);
            res.push(format!(
                "walltime={:02}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            ));
        }
        if !res.is_empty() {
            a.extend(["-l".into(), res.join(",")]);
        }
        for (flag, path) in [("-o", &spec.stdout), ("-e", &spec.stderr)] {
            if let Some(p) = path {
                if has_placeholders(p) {
                    return Err(BatchError::Unsupported {
                        backend: "pbs",
                        feature: format!("placeholders in output paths ({})", p.display()),
                    });
                }
                a.extend([flag.into(), p.to_string_lossy().into_owned()]);
            }
        }
        match (&spec.stdout, &spec.stderr) {
            (Some(_), None) => a.extend(["-j".into(), "oe".into()]),
            (None, None) => a.extend([
                "-o".into(),
                "/dev/null".into(),
                "-e".into(),
                "/dev/null".into(),
            ]),
            (None, Some(_)) => a.extend(["-o".into(), "/dev/null".into()]),
            (Some(_), Some(_)) => {}
        }
        if let Some(n) = spec.array {
            a.extend(["-t".into(), format!("0-{}", n - 1)]);
        }
        if !spec.after_ok.is_empty() {
            let ids: Vec<&str> = spec.after_ok.iter().map(JobId::as_str).collect();
            a.extend(["-W".into(), format!("depend=afterok:{}", ids.join(":"))]);
        }
        Ok(a)
    }
}

impl Batch for PbsBackend {
    fn kind(&self) -> &'static str {
        "pbs"
    }

    async fn submit(&self, spec: &JobSpec) -> Result<JobId, BatchError> {
        spec.validate()?;
        let mut args = Self::qsub_args(spec)?;
        let body = script::render(
            spec,
            "${PBS_ARRAYID:-${PBS_ARRAY_INDEX:-${SLURM_ARRAY_TASK_ID:-0}}}",
            true,
        );
        let (local, remote) = self.config.stage.write(&spec.name, "sh", &body)?;
        args.push(remote.to_string_lossy().into_owned());
        let result = self.config.runner.run("qsub", &args, None).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&local);
        }
        let out = result?;
        let id = out
            .stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .filter(|l| {
                l.starts_with(|c: char| c.is_ascii_digit()) && !l.contains(char::is_whitespace)
            });
        id.map(|s| JobId(s.to_owned()))
            .ok_or_else(|| BatchError::Parse {
                command: self.config.runner.display("qsub", &args),
                what: "expected a job id (`42` or `42.server`)".into(),
                output: out.excerpt(),
            })
    }

    async fn list(&self, query: &JobQuery) -> Result<Vec<JobInfo>, BatchError> {
        let args = vec!["-f".to_owned()];
        let out = self.config.runner.run_status("qstat", &args, None).await?;
        let nothing = out.status.code() == Some(QSTAT_NOTHING) && out.stdout.trim().is_empty();
        if !out.status.success() && !nothing {
            return Err(BatchError::Failed {
                command: self.config.runner.display("qstat", &args),
                status: out.status.to_string(),
                output: out.excerpt(),
            });
        }
        let jobs = parse_qstat_full(&out.stdout).map_err(|what| BatchError::Parse {
            command: self.config.runner.display("qstat", &args),
            what,
            output: out.excerpt(),
        })?;
        Ok(jobs.into_iter().filter(|j| query.matches(j)).collect())
    }

    async fn cancel(&self, id: &JobId) -> Result<(), BatchError> {
        self.config
            .runner
            .run("qdel", std::slice::from_ref(&id.0), None)
            .await?;
        Ok(())
    }
}

/// Maps a PBS state letter to a [`JobState`]; `exit` decides completed
/// versus failed where the system reports it.
pub fn map_state(code: &str, exit: Option<i32>) -> JobState {
    match code {
        "Q" | "H" | "W" | "T" | "M" => JobState::Pending,
        "R" | "E" | "B" | "S" => JobState::Running,
        "C" | "F" | "X" => match exit {
            Some(0) | None => JobState::Completed,
            Some(_) => JobState::Failed,
        },
        _ => JobState::Unknown,
    }
}

/// Parses `qstat -f`: blocks that start with `Job Id: ID` followed by
/// indented `key = value` lines.
pub fn parse_qstat_full(text: &str) -> Result<Vec<JobInfo>, String> {
    #[derive(Default)]
    struct Block {
        id: String,
        name: String,
        state: Option<String>,
        queue: Option<String>,
        exit: Option<i32>,
        comment: Option<String>,
    }
    fn finish(b: Block, out: &mut Vec<JobInfo>) -> Result<(), String> {
        let raw = b
            .state
            .ok_or_else(|| format!("job {} has no job_state", b.id))?;
        let array = b.id.split_once('[').and_then(|(parent, rest)| {
            let index = rest.split(']').next()?.parse().ok()?;
            Some((
                JobId(format!("{parent}[]{}", &rest[rest.find(']')? + 1..])),
                index,
            ))
        });
        out.push(JobInfo {
            id: JobId(b.id),
            name: b.name,
            state: map_state(&raw, b.exit),
            raw_state: raw,
            queue: b.queue,
            array,
            exit_code: b.exit,
            comment: b.comment,
        });
        Ok(())
    }
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for line in text.lines() {
        if let Some(id) = line.trim_start().strip_prefix("Job Id:") {
            if let Some(b) = cur.take() {
                finish(b, &mut out)?;
            }
            let id = id.trim();
            if id.is_empty() {
                return Err("a `Job Id:` line without an id".into());
            }
            cur = Some(Block {
                id: id.to_owned(),
                ..Default::default()
            });
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Some(b) = cur.as_mut() else {
            return Err(format!("text before the first `Job Id:` line: {line:?}"));
        };
        let Some((key, value)) = line.split_once(" = ") else {
            continue; // continuation of a long value
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "Job_Name" => b.name = value,
            "job_state" => b.state = Some(value),
            "queue" => b.queue = Some(value),
            "exit_status" | "Exit_status" => b.exit = value.parse().ok(),
            "comment" => b.comment = Some(value),
            _ => {}
        }
    }
    if let Some(b) = cur.take() {
        finish(b, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn qstat_full_of_the_torque_wrappers() {
        let text = "Job Id:\t5\n\tJob_Name = hello\n\tJob_Owner = root@vm\n\tjob_state = R\n\tqueue = exp\n\n\
                    Job Id:\t6\n\tJob_Name = done\n\tjob_state = C\n\tqueue = exp\n";
        let jobs = parse_qstat_full(text).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].id.0, "5");
        assert_eq!(jobs[0].state, JobState::Running);
        assert_eq!(jobs[1].state, JobState::Completed);
    }

    #[test]
    fn qstat_full_of_real_pbs() {
        let text = "Job Id: 12.server\n    Job_Name = bad\n    job_state = F\n    queue = workq\n    Exit_status = 2\n";
        let jobs = parse_qstat_full(text).unwrap();
        assert_eq!(jobs[0].state, JobState::Failed);
        assert_eq!(jobs[0].exit_code, Some(2));
        assert!(parse_qstat_full("nonsense = 1\n").is_err());
        assert!(parse_qstat_full("Job Id: 3\n Job_Name = x\n").is_err());
    }

    #[test]
    fn resources_become_a_resource_list() {
        let spec = JobSpec::command("j", ["true"])
            .nodes(1)
            .cpus(2)
            .memory_mib(100)
            .wall_time(std::time::Duration::from_secs(3723));
        let a = PbsBackend::qsub_args(&spec).unwrap();
        assert!(a.contains(&"nodes=1,ncpus=2,mem=100mb,walltime=01:02:03".to_owned()));
    }
}
