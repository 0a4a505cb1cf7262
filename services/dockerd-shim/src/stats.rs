//! A container's resource use, summarized (CPU %, memory, network bytes).

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use bollard::Docker;
use futures::StreamExt;

use crate::containers::ContainerError;

pub use uncloud_common::docker::StatsSummary;

/// Summarizes one stats sample. Pure.
pub fn summarize(s: &ContainerStatsResponse, host_memory: u64) -> StatsSummary {
    let total = |c: &Option<bollard::models::ContainerCpuStats>| {
        c.as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |c: &Option<bollard::models::ContainerCpuStats>| {
        c.as_ref().and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let cpu_delta = total(&s.cpu_stats).saturating_sub(total(&s.precpu_stats)) as f64;
    let system_delta = system(&s.cpu_stats).saturating_sub(system(&s.precpu_stats)) as f64;
    let cpus = s
        .cpu_stats
        .as_ref()
        .and_then(|c| c.online_cpus)
        .unwrap_or(1)
        .max(1) as f64;
    let cpu_percent = if system_delta > 0.0 {
        cpu_delta / system_delta * cpus * 100.0
    } else {
        0.0
    };
    let memory = s.memory_stats.as_ref();
    let limit = memory.and_then(|m| m.limit).unwrap_or(0);
    let (rx, tx) = s
        .networks
        .as_ref()
        .map(|n| {
            n.values().fold((0, 0), |(rx, tx), i| {
                (rx + i.rx_bytes.unwrap_or(0), tx + i.tx_bytes.unwrap_or(0))
            })
        })
        .unwrap_or((0, 0));
    StatsSummary {
        cpu_percent: (cpu_percent * 10.0).round() / 10.0,
        memory_bytes: memory.and_then(|m| m.usage).unwrap_or(0),
        memory_limit_bytes: if limit >= host_memory { 0 } else { limit },
        rx_bytes: rx,
        tx_bytes: tx,
        pids: s.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0),
    }
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

/// One sample (the engine takes about a second to measure CPU).
pub async fn stats(docker: &Docker, container: &str) -> Result<StatsSummary, ContainerError> {
    let mut stream = docker.stats(
        container,
        Some(StatsOptions {
            stream: false,
            one_shot: false,
        }),
    );
    match stream.next().await {
        Some(Ok(s)) => Ok(summarize(&s, host_memory())),
        Some(Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        })) => Err(ContainerError::NotFound(container.to_string())),
        Some(Err(e)) => Err(ContainerError::Engine {
            what: "read the stats of",
            name: container.to_string(),
            reason: e.to_string(),
        }),
        None => Err(ContainerError::Engine {
            what: "read the stats of",
            name: container.to_string(),
            reason: "the engine sent nothing".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    fn cpu(total: u64, system: u64) -> Option<ContainerCpuStats> {
        Some(ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(2),
            ..Default::default()
        })
    }

    #[test]
    fn cpu_and_memory() {
        let s = ContainerStatsResponse {
            cpu_stats: cpu(1_500, 10_000),
            precpu_stats: cpu(1_000, 8_000),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(4096),
                limit: Some(1 << 30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sum = summarize(&s, 8 << 30);
        assert_eq!(sum.cpu_percent, 50.0); // 500/2000 of the machine × 2 CPUs
        assert_eq!((sum.memory_bytes, sum.memory_limit_bytes), (4096, 1 << 30));
        // Unlimited: the engine reports the host's memory as the limit.
        assert_eq!(summarize(&s, 1 << 30).memory_limit_bytes, 0);
        // A first sample with no previous one is 0 %, not a division by zero.
        let first = ContainerStatsResponse {
            cpu_stats: cpu(10, 0),
            ..Default::default()
        };
        assert_eq!(summarize(&first, 1).cpu_percent, 0.0);
    }
}
