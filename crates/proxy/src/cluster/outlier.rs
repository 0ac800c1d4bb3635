//! Outlier detection (passive health checking), as Envoy's
//! `source/common/upstream/outlier_detection_impl.cc` does it.
//!
//! The router reports what happened to each attempt with
//! [`Cluster::report_outcome`]; consecutive-error ejections happen at once,
//! while un-ejection and success-rate / failure-percentage ejection run on
//! the detector's `interval` timer.
//!
//! Per-host counters live in [`HostOutlier`], inside the host's shared
//! `HostState`, so they survive cluster and endpoint updates that keep the
//! endpoint. What belongs to the cluster as a whole (stats, the timer, which
//! `Cluster` value is current) lives in [`ClusterHealth`], which successive
//! cluster values of the same name hand on to each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::OutlierDetection;
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use super::health_check::HealthCheckStats;
use super::{Cluster, HostState, health_flag};
use crate::duration::to_std;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// What happened to one upstream attempt, as the router (or TCP proxy) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status. For gRPC requests whose
    /// `grpc-status` is in the headers, Envoy reports the HTTP status that
    /// `grpc-status` maps to instead. Implies the connection was obtained.
    Response(u16),
    /// No connection could be made: refused, unreachable, connect timeout
    /// (Envoy: pool failure, `LocalOriginConnectFailed`).
    ConnectFailed,
    /// A connection was obtained, then the stream was reset or the
    /// connection closed before response headers (Envoy: upstream reset,
    /// `LocalOriginConnectFailed` after `LocalOriginConnectSuccess`).
    Reset,
    /// The per-try or route timeout fired while waiting for response headers
    /// (Envoy: `LocalOriginTimeout` with the timeout's 504).
    Timeout,
    /// TCP proxy: the upstream connection was established, which is all the
    /// TCP proxy checks (`LocalOriginConnectSuccessFinal`).
    Connected,
}

impl Outcome {
    /// What a failed attempt reports, if anything: circuit-breaker overflows
    /// are the cluster's, not the host's, and Envoy does not count them.
    pub fn from_error(e: &super::UpstreamError) -> Option<Self> {
        match e {
            super::UpstreamError::Connect(_) | super::UpstreamError::ConnectTimeout => {
                Some(Self::ConnectFailed)
            }
            super::UpstreamError::Reset(_) => Some(Self::Reset),
            super::UpstreamError::Overflow => None,
        }
    }
}

/// Envoy's `Grpc::Utility::grpcToHttpStatus`: the router reports a gRPC
/// response whose headers carry `grpc-status` as this HTTP status.
pub fn grpc_to_http_status(grpc_status: u64) -> u16 {
    match grpc_status {
        0 => 200,
        1 => 499,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 400,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

/// Envoy's `Outlier::Result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PutResult {
    ConnectSuccess,
    ConnectSuccessFinal,
    ConnectFailed,
    Timeout,
}

/// Why a host is (or would be) ejected; Envoy's `OutlierEjectionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

const TYPES: usize = 7;

impl EjectionType {
    fn index(self) -> usize {
        self as usize
    }

    /// The stat name suffix Envoy uses for this type.
    fn stat(self) -> &'static str {
        match self {
            Self::Consecutive5xx => "consecutive_5xx",
            Self::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Self::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Self::SuccessRate => "success_rate",
            Self::SuccessRateLocalOrigin => "local_origin_success_rate",
            Self::FailurePercentage => "failure_percentage",
            Self::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }

    const ALL: [Self; TYPES] = [
        Self::Consecutive5xx,
        Self::ConsecutiveGatewayFailure,
        Self::ConsecutiveLocalOriginFailure,
        Self::SuccessRate,
        Self::SuccessRateLocalOrigin,
        Self::FailurePercentage,
        Self::FailurePercentageLocalOrigin,
    ];
}

/// The compiled `outlier_detection` of a cluster, with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub successful_active_health_check_uneject_host: bool,
}

fn positive(d: Option<&PbDuration>, field: &str) -> Result<Option<Duration>, (String, String)> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds > 0 || (d.seconds == 0 && d.nanos > 0) => Ok(Some(to_std(d))),
        Some(_) => Err((field.to_string(), "must be greater than 0s".to_string())),
    }
}

fn percent(
    v: Option<&envoy_types::pb::google::protobuf::UInt32Value>,
    default: u32,
    field: &str,
) -> Result<u32, (String, String)> {
    match v.map(|v| v.value) {
        Some(p) if p > 100 => Err((field.to_string(), format!("{p} is more than 100"))),
        Some(p) => Ok(p),
        None => Ok(default),
    }
}

impl OutlierConfig {
    /// Compiles `outlier_detection`; errors name the field relative to it.
    pub fn compile(od: &OutlierDetection) -> Result<Self, (String, String)> {
        let u = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
            v.map_or(d, |v| v.value)
        };
        let interval = positive(od.interval.as_ref(), "interval")?.unwrap_or(DEFAULT_INTERVAL);
        let base_ejection_time = positive(od.base_ejection_time.as_ref(), "base_ejection_time")?
            .unwrap_or(DEFAULT_BASE_EJECTION_TIME);
        // Unset: the default or base_ejection_time, whichever is larger.
        let max_ejection_time = positive(od.max_ejection_time.as_ref(), "max_ejection_time")?
            .unwrap_or_else(|| DEFAULT_MAX_EJECTION_TIME.max(base_ejection_time));
        if max_ejection_time < base_ejection_time {
            return Err((
                "max_ejection_time".into(),
                "outlier detector's max_ejection_time cannot be smaller than base_ejection_time"
                    .into(),
            ));
        }
        if !od.monitors.is_empty() {
            return Err((
                "monitors".into(),
                "outlier detection monitors are not supported".into(),
            ));
        }
        if od.detect_degraded_hosts.is_some_and(|b| b.value) {
            return Err((
                "detect_degraded_hosts".into(),
                "degraded host detection is not supported".into(),
            ));
        }
        Ok(Self {
            interval,
            base_ejection_time,
            max_ejection_time,
            max_ejection_time_jitter: od
                .max_ejection_time_jitter
                .as_ref()
                .map(to_std)
                .unwrap_or(Duration::ZERO),
            max_ejection_percent: percent(
                od.max_ejection_percent.as_ref(),
                10,
                "max_ejection_percent",
            )?,
            always_eject_one_host: od.always_eject_one_host.is_some_and(|b| b.value),
            consecutive_5xx: u(od.consecutive_5xx.as_ref(), 5),
            consecutive_gateway_failure: u(od.consecutive_gateway_failure.as_ref(), 5),
            consecutive_local_origin_failure: u(od.consecutive_local_origin_failure.as_ref(), 5),
            enforcing_consecutive_5xx: percent(
                od.enforcing_consecutive_5xx.as_ref(),
                100,
                "enforcing_consecutive_5xx",
            )?,
            enforcing_consecutive_gateway_failure: percent(
                od.enforcing_consecutive_gateway_failure.as_ref(),
                0,
                "enforcing_consecutive_gateway_failure",
            )?,
            enforcing_consecutive_local_origin_failure: percent(
                od.enforcing_consecutive_local_origin_failure.as_ref(),
                100,
                "enforcing_consecutive_local_origin_failure",
            )?,
            split_external_local_origin_errors: od.split_external_local_origin_errors,
            success_rate_minimum_hosts: u(od.success_rate_minimum_hosts.as_ref(), 5),
            success_rate_request_volume: u(od.success_rate_request_volume.as_ref(), 100),
            success_rate_stdev_factor: u(od.success_rate_stdev_factor.as_ref(), 1900),
            enforcing_success_rate: percent(
                od.enforcing_success_rate.as_ref(),
                100,
                "enforcing_success_rate",
            )?,
            enforcing_local_origin_success_rate: percent(
                od.enforcing_local_origin_success_rate.as_ref(),
                100,
                "enforcing_local_origin_success_rate",
            )?,
            failure_percentage_threshold: percent(
                od.failure_percentage_threshold.as_ref(),
                85,
                "failure_percentage_threshold",
            )?,
            failure_percentage_minimum_hosts: u(od.failure_percentage_minimum_hosts.as_ref(), 5),
            failure_percentage_request_volume: u(od.failure_percentage_request_volume.as_ref(), 50),
            enforcing_failure_percentage: percent(
                od.enforcing_failure_percentage.as_ref(),
                0,
                "enforcing_failure_percentage",
            )?,
            enforcing_failure_percentage_local_origin: percent(
                od.enforcing_failure_percentage_local_origin.as_ref(),
                0,
                "enforcing_failure_percentage_local_origin",
            )?,
            successful_active_health_check_uneject_host: od
                .successful_active_health_check_uneject_host
                .is_none_or(|b| b.value),
        })
    }

    fn enforcing(&self, t: EjectionType) -> u32 {
        match t {
            EjectionType::Consecutive5xx => self.enforcing_consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => self.enforcing_consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => {
                self.enforcing_consecutive_local_origin_failure
            }
            EjectionType::SuccessRate => self.enforcing_success_rate,
            EjectionType::SuccessRateLocalOrigin => self.enforcing_local_origin_success_rate,
            EjectionType::FailurePercentage => self.enforcing_failure_percentage,
            EjectionType::FailurePercentageLocalOrigin => {
                self.enforcing_failure_percentage_local_origin
            }
        }
    }
}

/// Envoy's `featureEnabled(key, percent)`.
fn roll(percent: u32) -> bool {
    percent >= 100 || (percent > 0 && rand::random_range(0..100u32) < percent)
}

/// `cluster.<name>.outlier_detection.*` counters.
#[derive(Debug, Default)]
pub struct OutlierStats {
    ejections_enforced_total: AtomicU64,
    ejections_overflow: AtomicU64,
    /// Deprecated in Envoy but still emitted: consecutive 5xx and success
    /// rate ejections that passed the max-percent check, enforced or not.
    ejections_total: AtomicU64,
    ejections_consecutive_5xx: AtomicU64,
    ejections_success_rate: AtomicU64,
    detected: [AtomicU64; TYPES],
    enforced: [AtomicU64; TYPES],
}

impl OutlierStats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, by Envoy's name (without the
    /// `cluster.<name>.outlier_detection.` prefix), sorted by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = vec![
            (
                "ejections_enforced_total".to_string(),
                get(&self.ejections_enforced_total),
            ),
            (
                "ejections_overflow".to_string(),
                get(&self.ejections_overflow),
            ),
            ("ejections_total".to_string(), get(&self.ejections_total)),
            (
                "ejections_consecutive_5xx".to_string(),
                get(&self.ejections_consecutive_5xx),
            ),
            (
                "ejections_success_rate".to_string(),
                get(&self.ejections_success_rate),
            ),
        ];
        for t in EjectionType::ALL {
            out.push((
                format!("ejections_detected_{}", t.stat()),
                get(&self.detected[t.index()]),
            ));
            out.push((
                format!("ejections_enforced_{}", t.stat()),
                get(&self.enforced[t.index()]),
            ));
        }
        out.sort();
        out
    }

    pub fn ejections_enforced_total(&self) -> u64 {
        self.ejections_enforced_total.load(Ordering::Relaxed)
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections_total.load(Ordering::Relaxed)
    }

    pub fn ejections_overflow(&self) -> u64 {
        self.ejections_overflow.load(Ordering::Relaxed)
    }

    pub fn detected(&self, t: EjectionType) -> u64 {
        self.detected[t.index()].load(Ordering::Relaxed)
    }

    pub fn enforced(&self, t: EjectionType) -> u64 {
        self.enforced[t.index()].load(Ordering::Relaxed)
    }
}

/// Success-rate numbers of the last interval, for `/clusters`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SuccessRateNumbers {
    pub average: f64,
    pub ejection_threshold: f64,
}

/// Health state of one cluster name: shared by the successive `Cluster`
/// values built for it, so that stats, timers and ejection bookkeeping
/// survive updates.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    state: Mutex<SharedState>,
    pub outlier_stats: OutlierStats,
    pub hc_stats: HealthCheckStats,
}

#[derive(Debug, Default)]
struct SharedState {
    /// The cluster value most recently started; timers and ejections work
    /// on its host list, and every health change refreshes its balancer.
    current: Weak<Cluster>,
    /// Whether the interval timer task runs.
    outlier_timer: bool,
    next_tick: Option<Instant>,
    external_sr: Option<SuccessRateNumbers>,
    local_sr: Option<SuccessRateNumbers>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClusterHealth {
    pub(crate) fn current(&self) -> Option<Arc<Cluster>> {
        lock(&self.state).current.upgrade()
    }

    /// Success-rate average and ejection threshold of the last interval
    /// (external origin), when enough hosts had enough requests.
    pub fn success_rate(&self) -> Option<SuccessRateNumbers> {
        lock(&self.state).external_sr
    }

    /// As [`Self::success_rate`], for local-origin results (split mode).
    pub fn local_origin_success_rate(&self) -> Option<SuccessRateNumbers> {
        lock(&self.state).local_sr
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    success: u64,
    total: u64,
}

/// Envoy's `SuccessRateMonitor`: requests are counted into `current`; each
/// interval it becomes `backup`, which the detector evaluates.
#[derive(Debug, Default)]
struct SuccessRateMonitor {
    current: Bucket,
    backup: Bucket,
    /// The host's success rate as last evaluated, for `/clusters`.
    rate: Option<f64>,
}

impl SuccessRateMonitor {
    fn swap(&mut self) {
        self.backup = self.current;
        self.current = Bucket::default();
    }

    fn rate_and_volume(&self) -> Option<(f64, u64)> {
        (self.backup.total > 0).then(|| {
            (
                self.backup.success as f64 * 100.0 / self.backup.total as f64,
                self.backup.total,
            )
        })
    }
}

#[derive(Debug, Default)]
struct Monitor {
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
    consecutive_local_origin_failure: u32,
    num_ejections: u32,
    /// Multiplies `base_ejection_time`; grows with each ejection and decays
    /// while the host stays healthy.
    eject_time_backoff: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    jitter: Duration,
    external: SuccessRateMonitor,
    local: SuccessRateMonitor,
}

/// Per-host outlier-detection counters and ejection state.
#[derive(Debug, Default)]
pub struct HostOutlier {
    inner: Mutex<Monitor>,
}

/// Which success-rate monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    External,
    Local,
}

impl Monitor {
    fn sr(&mut self, o: Origin) -> &mut SuccessRateMonitor {
        match o {
            Origin::External => &mut self.external,
            Origin::Local => &mut self.local,
        }
    }

    fn reset_consecutive(&mut self) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway_failure = 0;
        self.consecutive_local_origin_failure = 0;
    }

    /// `putHttpResponseCode`.
    fn put_http_code(&mut self, cfg: &OutlierConfig, code: u16, hits: &mut Vec<EjectionType>) {
        self.external.current.total += 1;
        if (500..600).contains(&code) {
            if matches!(code, 502..=504) {
                self.consecutive_gateway_failure += 1;
                if self.consecutive_gateway_failure == cfg.consecutive_gateway_failure {
                    hits.push(EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                self.consecutive_gateway_failure = 0;
            }
            self.consecutive_5xx += 1;
            if self.consecutive_5xx == cfg.consecutive_5xx {
                hits.push(EjectionType::Consecutive5xx);
            }
        } else {
            self.external.current.success += 1;
            self.consecutive_5xx = 0;
            self.consecutive_gateway_failure = 0;
        }
    }

    fn local_origin_failure(&mut self, cfg: &OutlierConfig, hits: &mut Vec<EjectionType>) {
        self.local.current.total += 1;
        self.consecutive_local_origin_failure += 1;
        if self.consecutive_local_origin_failure == cfg.consecutive_local_origin_failure {
            hits.push(EjectionType::ConsecutiveLocalOriginFailure);
        }
    }

    fn local_origin_no_failure(&mut self) {
        self.local.current.total += 1;
        self.local.current.success += 1;
        self.consecutive_local_origin_failure = 0;
    }

    /// `putResult`, with the router's status code for timeouts.
    fn put_result(
        &mut self,
        cfg: &OutlierConfig,
        result: PutResult,
        code: Option<u16>,
        hits: &mut Vec<EjectionType>,
    ) {
        if cfg.split_external_local_origin_errors {
            match result {
                PutResult::ConnectSuccess | PutResult::ConnectSuccessFinal => {
                    self.local_origin_no_failure()
                }
                PutResult::ConnectFailed | PutResult::Timeout => {
                    self.local_origin_failure(cfg, hits)
                }
            }
        } else {
            let code = code.or(match result {
                PutResult::ConnectSuccess => None,
                PutResult::ConnectSuccessFinal => Some(200),
                PutResult::Timeout => Some(504),
                PutResult::ConnectFailed => Some(503),
            });
            if let Some(code) = code {
                self.put_http_code(cfg, code, hits);
            }
        }
    }

    fn put(&mut self, cfg: &OutlierConfig, outcome: Outcome) -> Vec<EjectionType> {
        let mut hits = Vec::new();
        match outcome {
            Outcome::Response(code) => {
                self.put_result(cfg, PutResult::ConnectSuccess, None, &mut hits);
                self.put_http_code(cfg, code, &mut hits);
            }
            Outcome::ConnectFailed => {
                self.put_result(cfg, PutResult::ConnectFailed, None, &mut hits)
            }
            Outcome::Reset => {
                self.put_result(cfg, PutResult::ConnectSuccess, None, &mut hits);
                self.put_result(cfg, PutResult::ConnectFailed, None, &mut hits);
            }
            Outcome::Timeout => {
                self.put_result(cfg, PutResult::ConnectSuccess, None, &mut hits);
                self.put_result(cfg, PutResult::Timeout, Some(504), &mut hits);
            }
            Outcome::Connected => {
                self.put_result(cfg, PutResult::ConnectSuccessFinal, None, &mut hits)
            }
        }
        hits
    }

    fn eject(&mut self, cfg: &OutlierConfig, now: Instant) {
        self.num_ejections += 1;
        self.last_ejection = Some(now);
        let max_jitter = u64::try_from(cfg.max_ejection_time_jitter.as_millis()).unwrap_or(0);
        self.jitter = Duration::from_millis(rand::random::<u64>() % (max_jitter.saturating_add(1)));
        if cfg.base_ejection_time * self.eject_time_backoff
            < cfg.max_ejection_time + cfg.base_ejection_time
        {
            self.eject_time_backoff += 1;
        }
    }

    fn uneject(&mut self, now: Instant) {
        self.reset_consecutive();
        self.last_unejection = Some(now);
    }
}

impl HostOutlier {
    fn lock(&self) -> MutexGuard<'_, Monitor> {
        lock(&self.inner)
    }

    /// How many times this host has been ejected.
    pub fn num_ejections(&self) -> u32 {
        self.lock().num_ejections
    }

    /// The success rate (percent) of the last interval, when the host had
    /// enough requests for it to count.
    pub fn success_rate(&self) -> Option<f64> {
        self.lock().external.rate
    }

    /// As [`Self::success_rate`], for local-origin results (split mode).
    pub fn local_origin_success_rate(&self) -> Option<f64> {
        self.lock().local.rate
    }

    fn reset(&self) {
        *self.lock() = Monitor::default();
    }
}

fn has_flag(state: &HostState, flag: u32) -> bool {
    state.health_flags.load(Ordering::Acquire) & flag != 0
}

fn is_member(cluster: &Cluster, state: &Arc<HostState>) -> bool {
    cluster
        .all_hosts
        .iter()
        .any(|h| Arc::ptr_eq(&h.state, state))
}

impl Cluster {
    /// The health bookkeeping shared with the other values of this cluster.
    pub(crate) fn health_state(&self) -> &Arc<ClusterHealth> {
        self.spec.health.get_or_init(Default::default)
    }

    /// Runs `f` on the current value of this cluster (the one the store
    /// started last), or on `self` when none is alive.
    fn with_current<R>(&self, f: impl FnOnce(&Self) -> R) -> R {
        match self.health_state().current() {
            Some(c) => f(&c),
            None => f(self),
        }
    }

    /// Rebuilds the balancer of this value and of the current one.
    pub(crate) fn refresh_all(&self) {
        self.refresh_lb();
        if let Some(c) = self.health_state().current()
            && !std::ptr::eq(Arc::as_ptr(&c), self)
        {
            c.refresh_lb();
        }
    }

    pub(crate) fn report_outcome_at(&self, state: &Arc<HostState>, outcome: Outcome, now: Instant) {
        let Some(cfg) = self.spec.outlier.as_deref() else {
            return;
        };
        let hits = state.outlier.lock().put(cfg, outcome);
        if hits.is_empty() {
            return;
        }
        let ejected = self.with_current(|c| {
            let Some(cfg) = c.spec.outlier.as_deref() else {
                return false;
            };
            let mut ejected = false;
            for t in hits {
                ejected |= on_consecutive_error(c, cfg, state, t, now);
            }
            ejected
        });
        if ejected {
            self.refresh_all();
        }
    }

    /// One run of the detector's interval timer: un-ejection, success-rate
    /// and failure-percentage ejection, back-off decay.
    pub(crate) fn outlier_tick(&self, now: Instant) {
        let Some(cfg) = self.spec.outlier.as_deref() else {
            return;
        };
        let shared = self.health_state();
        let mut changed = false;
        {
            let mut st = lock(&shared.state);
            for h in &self.all_hosts {
                let mut m = h.state.outlier.lock();
                if has_flag(&h.state, health_flag::FAILED_OUTLIER_CHECK)
                    && let Some(last) = m.last_ejection
                {
                    let ejected_for = (cfg.base_ejection_time * m.eject_time_backoff)
                        .min(cfg.max_ejection_time)
                        + m.jitter;
                    if ejected_for <= now.saturating_duration_since(last) {
                        h.state
                            .health_flags
                            .fetch_and(!health_flag::FAILED_OUTLIER_CHECK, Ordering::AcqRel);
                        m.uneject(now);
                        changed = true;
                    }
                }
                m.external.swap();
                m.local.swap();
                m.external.rate = None;
                m.local.rate = None;
            }
            st.external_sr = None;
            st.local_sr = None;
            for origin in [Origin::External, Origin::Local] {
                changed |= self.success_rate_ejections(cfg, &mut st, origin, now);
            }
            for h in &self.all_hosts {
                if has_flag(&h.state, health_flag::FAILED_OUTLIER_CHECK) {
                    continue;
                }
                let mut m = h.state.outlier.lock();
                if m.last_unejection
                    .is_some_and(|t| now.saturating_duration_since(t) >= cfg.interval)
                    && m.eject_time_backoff != 0
                {
                    m.eject_time_backoff -= 1;
                }
            }
        }
        if changed {
            self.refresh_all();
        }
    }

    /// Envoy's `processSuccessRateEjections`. Returns whether it ejected.
    fn success_rate_ejections(
        &self,
        cfg: &OutlierConfig,
        st: &mut SharedState,
        origin: Origin,
        now: Instant,
    ) -> bool {
        let hosts = self.all_hosts.len();
        if hosts < cfg.success_rate_minimum_hosts as usize
            && hosts < cfg.failure_percentage_minimum_hosts as usize
        {
            return false;
        }
        let sr_volume = u64::from(cfg.success_rate_request_volume);
        let fp_volume = u64::from(cfg.failure_percentage_request_volume);
        let mut valid_sr = Vec::new();
        let mut valid_fp = Vec::new();
        let mut sum = 0.0;
        for h in &self.all_hosts {
            if has_flag(&h.state, health_flag::FAILED_OUTLIER_CHECK) {
                continue;
            }
            let mut m = h.state.outlier.lock();
            let sr = m.sr(origin);
            let Some((rate, volume)) = sr.rate_and_volume() else {
                continue;
            };
            if volume >= sr_volume.min(fp_volume) {
                sr.rate = Some(rate);
            }
            if volume >= sr_volume {
                valid_sr.push((&h.state, rate));
                sum += rate;
            }
            if volume >= fp_volume {
                valid_fp.push((&h.state, rate));
            }
        }
        let shared = self.health_state();
        let mut ejected = false;
        if !valid_sr.is_empty() && valid_sr.len() >= cfg.success_rate_minimum_hosts as usize {
            let n = valid_sr.len() as f64;
            let mean = sum / n;
            let variance = valid_sr
                .iter()
                .map(|(_, r)| (r - mean).powi(2))
                .sum::<f64>()
                / n;
            let threshold =
                mean - f64::from(cfg.success_rate_stdev_factor) / 1000.0 * variance.sqrt();
            let numbers = SuccessRateNumbers {
                average: mean,
                ejection_threshold: threshold,
            };
            let t = match origin {
                Origin::External => {
                    st.external_sr = Some(numbers);
                    EjectionType::SuccessRate
                }
                Origin::Local => {
                    st.local_sr = Some(numbers);
                    EjectionType::SuccessRateLocalOrigin
                }
            };
            for (state, rate) in &valid_sr {
                if *rate < threshold {
                    OutlierStats::inc(&shared.outlier_stats.ejections_success_rate);
                    OutlierStats::inc(&shared.outlier_stats.detected[t.index()]);
                    ejected |= eject_host(self, cfg, state, t, now);
                }
            }
        }
        if !valid_fp.is_empty() && valid_fp.len() >= cfg.failure_percentage_minimum_hosts as usize {
            let t = match origin {
                Origin::External => EjectionType::FailurePercentage,
                Origin::Local => EjectionType::FailurePercentageLocalOrigin,
            };
            for (state, rate) in &valid_fp {
                if 100.0 - rate >= f64::from(cfg.failure_percentage_threshold) {
                    OutlierStats::inc(&shared.outlier_stats.detected[t.index()]);
                    // Envoy would eject a host twice if both checks caught it.
                    if !has_flag(state, health_flag::FAILED_OUTLIER_CHECK) {
                        ejected |= eject_host(self, cfg, state, t, now);
                    }
                }
            }
        }
        ejected
    }

    /// Called when active health checking found `state` healthy: Envoy
    /// un-ejects a host that outlier detection ejected
    /// (`successful_active_health_check_uneject_host`).
    pub(crate) fn outlier_on_hc_success(&self, state: &Arc<HostState>, now: Instant) {
        let unejected = self.with_current(|c| {
            let Some(cfg) = c.spec.outlier.as_deref() else {
                return false;
            };
            if !cfg.successful_active_health_check_uneject_host {
                return false;
            }
            let _g = lock(&c.health_state().state);
            let flags = state.health_flags.load(Ordering::Acquire);
            if flags & health_flag::FAILED_ACTIVE_HC != 0
                || flags & health_flag::FAILED_OUTLIER_CHECK == 0
            {
                return false;
            }
            state
                .health_flags
                .fetch_and(!health_flag::FAILED_OUTLIER_CHECK, Ordering::AcqRel);
            state.outlier.lock().uneject(now);
            true
        });
        if unejected {
            self.refresh_all();
        }
    }

    /// `cluster.<name>.outlier_detection.*`, including the
    /// `ejections_active` gauge; empty without outlier detection.
    pub(crate) fn outlier_stat_values(&self) -> Vec<(String, u64)> {
        if self.spec.outlier.is_none() {
            return Vec::new();
        }
        let mut out = self.health_state().outlier_stats.counters();
        let active = self
            .all_hosts
            .iter()
            .filter(|h| has_flag(&h.state, health_flag::FAILED_OUTLIER_CHECK))
            .count() as u64;
        out.push(("ejections_active".to_string(), active));
        out.sort();
        out
    }

    /// Starts (or hands on) outlier detection for a newly built value.
    /// Returns whether it changed a host's health flags.
    pub(crate) fn start_outlier(self: &Arc<Self>) -> bool {
        if self.spec.outlier.is_none() {
            // Detection was turned off: nothing stays ejected.
            let mut changed = false;
            for h in &self.all_hosts {
                let old = h
                    .state
                    .health_flags
                    .fetch_and(!health_flag::FAILED_OUTLIER_CHECK, Ordering::AcqRel);
                if old & health_flag::FAILED_OUTLIER_CHECK != 0 {
                    changed = true;
                    h.state.outlier.reset();
                }
            }
            return changed;
        }
        let shared = self.health_state();
        let mut st = lock(&shared.state);
        if st.outlier_timer {
            return false;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        st.outlier_timer = true;
        rt.spawn(outlier_timer(Arc::downgrade(shared)));
        false
    }

    /// Records `self` as the current value of its cluster.
    pub(crate) fn make_current(self: &Arc<Self>, previous: Option<&Self>) {
        if let Some(shared) = previous.and_then(|p| p.spec.health.get()) {
            let _ = self.spec.health.set(Arc::clone(shared));
        }
        lock(&self.health_state().state).current = Arc::downgrade(self);
    }
}

/// Envoy's `onConsecutiveErrorWorker`: returns whether the host was ejected.
fn on_consecutive_error(
    cluster: &Cluster,
    cfg: &OutlierConfig,
    state: &Arc<HostState>,
    t: EjectionType,
    now: Instant,
) -> bool {
    if !is_member(cluster, state) {
        return false;
    }
    let shared = cluster.health_state();
    let _g = lock(&shared.state);
    if has_flag(state, health_flag::FAILED_OUTLIER_CHECK) {
        return false;
    }
    OutlierStats::inc(&shared.outlier_stats.detected[t.index()]);
    let ejected = eject_host(cluster, cfg, state, t, now);
    let mut m = state.outlier.lock();
    match t {
        EjectionType::Consecutive5xx => {
            OutlierStats::inc(&shared.outlier_stats.ejections_consecutive_5xx);
            m.consecutive_5xx = 0;
        }
        EjectionType::ConsecutiveGatewayFailure => m.consecutive_gateway_failure = 0,
        EjectionType::ConsecutiveLocalOriginFailure => m.consecutive_local_origin_failure = 0,
        _ => {}
    }
    ejected
}

/// Envoy's `ejectHost`; the caller holds the shared state lock. Returns
/// whether the host was ejected.
fn eject_host(
    cluster: &Cluster,
    cfg: &OutlierConfig,
    state: &Arc<HostState>,
    t: EjectionType,
    now: Instant,
) -> bool {
    let stats = &cluster.health_state().outlier_stats;
    let hosts = cluster.all_hosts.len().max(1);
    let active = cluster
        .all_hosts
        .iter()
        .filter(|h| has_flag(&h.state, health_flag::FAILED_OUTLIER_CHECK))
        .count();
    let max_percent = f64::from(cfg.max_ejection_percent.min(100));
    let ejected_percent = 100.0 * (active + 1) as f64 / hosts as f64;
    let mut should_eject = ejected_percent <= max_percent;
    if cfg.always_eject_one_host {
        should_eject = active == 0 || should_eject;
    }
    if !should_eject {
        OutlierStats::inc(&stats.ejections_overflow);
        return false;
    }
    if matches!(t, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
        OutlierStats::inc(&stats.ejections_total);
    }
    if !roll(cfg.enforcing(t)) {
        return false;
    }
    OutlierStats::inc(&stats.ejections_enforced_total);
    OutlierStats::inc(&stats.enforced[t.index()]);
    state
        .health_flags
        .fetch_or(health_flag::FAILED_OUTLIER_CHECK, Ordering::AcqRel);
    state.outlier.lock().eject(cfg, now);
    tracing::debug!(cluster = %cluster.name(), ?t, "outlier detection ejected a host");
    true
}

/// The detector's interval timer. One per cluster name; it follows the
/// current cluster value and ends when there is none, or it has no outlier
/// detection.
async fn outlier_timer(shared: Weak<ClusterHealth>) {
    loop {
        let deadline = {
            let Some(s) = shared.upgrade() else { return };
            let mut st = lock(&s.state);
            let interval = st
                .current
                .upgrade()
                .and_then(|c| c.spec.outlier.as_ref().map(|o| o.interval))
                .unwrap_or(DEFAULT_INTERVAL);
            *st.next_tick
                .get_or_insert_with(|| Instant::now() + interval)
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        let Some(s) = shared.upgrade() else { return };
        let cluster = {
            let mut st = lock(&s.state);
            match st.current.upgrade() {
                Some(c) if c.spec.outlier.is_some() => c,
                _ => {
                    st.outlier_timer = false;
                    st.next_tick = None;
                    return;
                }
            }
        };
        let now = Instant::now();
        cluster.outlier_tick(now);
        let interval = cluster
            .spec
            .outlier
            .as_ref()
            .map_or(DEFAULT_INTERVAL, |o| o.interval);
        lock(&s.state).next_tick = Some(now + interval);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Clusters with static endpoints, built as the store builds them.

    use std::net::SocketAddr;
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::cluster::v3::{Cluster as ClusterProto, cluster};
    use envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };

    use crate::cluster::{Cluster, ClusterSpec};

    pub(crate) fn proto(name: &str, addrs: &[SocketAddr]) -> ClusterProto {
        let lb_endpoints = addrs
            .iter()
            .map(|a| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: a.ip().to_string(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                u32::from(a.port()),
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        ClusterProto {
            name: name.to_string(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            )),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name.to_string(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Endpoints 10.0.0.1:80, 10.0.0.2:80, ...
    pub(crate) fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect()
    }

    /// Compiles and builds `p`, handing on from `previous`, and starts it.
    pub(crate) fn build(p: &ClusterProto, previous: Option<&Arc<Cluster>>) -> Arc<Cluster> {
        let spec = ClusterSpec::compile(p).expect("compile");
        let c = Arc::new(
            spec.instantiate(None, previous.map(|c| c.as_ref()))
                .expect("instantiate"),
        );
        c.start(previous.map(|c| c.as_ref()));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{addrs, build, proto};
    use super::*;
    use crate::cluster::{ClusterSpec, LbContext};
    use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

    fn od() -> OutlierDetection {
        OutlierDetection {
            max_ejection_percent: Some(UInt32Value { value: 100 }),
            ..Default::default()
        }
    }

    fn cluster_with(n: u8, od: OutlierDetection) -> Arc<Cluster> {
        let mut p = proto("outlier", &addrs(n));
        p.outlier_detection = Some(od);
        build(&p, None)
    }

    fn ejected(c: &Cluster, i: usize) -> bool {
        has_flag(&c.all_hosts[i].state, health_flag::FAILED_OUTLIER_CHECK)
    }

    fn report(c: &Cluster, i: usize, o: Outcome, times: usize, now: Instant) {
        for _ in 0..times {
            c.report_outcome_at(&c.all_hosts[i].state, o, now);
        }
    }

    fn stat(c: &Cluster, name: &str) -> u64 {
        c.outlier_stat_values()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .expect("stat exists")
    }

    #[test]
    fn defaults_are_envoys() {
        let cfg = OutlierConfig::compile(&OutlierDetection::default()).expect("compile");
        assert_eq!(cfg.interval, Duration::from_secs(10));
        assert_eq!(cfg.base_ejection_time, Duration::from_secs(30));
        assert_eq!(cfg.max_ejection_time, Duration::from_secs(300));
        assert_eq!(cfg.max_ejection_percent, 10);
        assert_eq!(
            (cfg.consecutive_5xx, cfg.enforcing_consecutive_5xx),
            (5, 100)
        );
        assert_eq!(
            (
                cfg.consecutive_gateway_failure,
                cfg.enforcing_consecutive_gateway_failure
            ),
            (5, 0)
        );
        assert_eq!(
            (
                cfg.consecutive_local_origin_failure,
                cfg.enforcing_consecutive_local_origin_failure
            ),
            (5, 100)
        );
        assert_eq!(cfg.success_rate_stdev_factor, 1900);
        assert_eq!(cfg.enforcing_failure_percentage, 0);
        assert!(cfg.successful_active_health_check_uneject_host);
        // A base ejection time above the default maximum raises the maximum.
        let cfg = OutlierConfig::compile(&OutlierDetection {
            base_ejection_time: Some(PbDuration {
                seconds: 400,
                nanos: 0,
            }),
            ..Default::default()
        })
        .expect("compile");
        assert_eq!(cfg.max_ejection_time, Duration::from_secs(400));
    }

    #[test]
    fn bad_config_is_rejected_with_the_field() {
        let cases = [
            (
                OutlierDetection {
                    interval: Some(PbDuration::default()),
                    ..Default::default()
                },
                "interval",
            ),
            (
                OutlierDetection {
                    max_ejection_percent: Some(UInt32Value { value: 101 }),
                    ..Default::default()
                },
                "max_ejection_percent",
            ),
            (
                OutlierDetection {
                    base_ejection_time: Some(PbDuration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    max_ejection_time: Some(PbDuration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "max_ejection_time",
            ),
            (
                OutlierDetection {
                    enforcing_consecutive_5xx: Some(UInt32Value { value: 200 }),
                    ..Default::default()
                },
                "enforcing_consecutive_5xx",
            ),
        ];
        for (od, field) in cases {
            let mut p = proto("bad", &addrs(1));
            p.outlier_detection = Some(od);
            let err = ClusterSpec::compile(&p).expect_err("rejected");
            assert_eq!(err.field, format!("outlier_detection.{field}"), "{err}");
        }
    }

    #[test]
    fn five_consecutive_5xx_eject_at_once() {
        let c = cluster_with(3, od());
        let now = Instant::now();
        report(&c, 0, Outcome::Response(500), 4, now);
        assert!(!ejected(&c, 0));
        // A success in between starts the count again.
        report(&c, 0, Outcome::Response(200), 1, now);
        report(&c, 0, Outcome::Response(500), 4, now);
        assert!(!ejected(&c, 0));
        report(&c, 0, Outcome::Response(500), 1, now);
        assert!(ejected(&c, 0));
        for _ in 0..20 {
            let picked = c.pick(&LbContext::default()).expect("a host");
            assert!(!Arc::ptr_eq(&picked.state, &c.all_hosts[0].state));
        }
        assert_eq!(stat(&c, "ejections_active"), 1);
        assert_eq!(stat(&c, "ejections_enforced_total"), 1);
        assert_eq!(stat(&c, "ejections_enforced_consecutive_5xx"), 1);
        assert_eq!(stat(&c, "ejections_detected_consecutive_5xx"), 1);
        assert_eq!(stat(&c, "ejections_total"), 1);
        // 4xx are successes for outlier detection.
        report(&c, 1, Outcome::Response(404), 10, now);
        assert!(!ejected(&c, 1));
    }

    #[test]
    fn max_ejection_percent_limits_ejections() {
        // Envoy's default 10% ejects nothing among three hosts...
        let c = cluster_with(3, OutlierDetection::default());
        let now = Instant::now();
        report(&c, 0, Outcome::Response(500), 5, now);
        assert!(!ejected(&c, 0));
        assert_eq!(stat(&c, "ejections_overflow"), 1);
        assert_eq!(stat(&c, "ejections_detected_consecutive_5xx"), 1);
        // ... and the counter was reset, so five more are needed to try again.
        report(&c, 0, Outcome::Response(500), 4, now);
        assert_eq!(stat(&c, "ejections_overflow"), 1);
        // Five 503s are both consecutive 5xx and gateway failures: the
        // percentage check refuses both, before enforcement is considered.
        report(&c, 1, Outcome::Response(503), 5, now);
        assert_eq!(stat(&c, "ejections_overflow"), 3);
        assert_eq!(
            stat(&c, "ejections_detected_consecutive_gateway_failure"),
            1
        );
        // ... unless always_eject_one_host.
        let c = cluster_with(
            3,
            OutlierDetection {
                always_eject_one_host: Some(BoolValue { value: true }),
                ..Default::default()
            },
        );
        report(&c, 0, Outcome::Response(503), 5, now);
        assert!(ejected(&c, 0));
        report(&c, 1, Outcome::Response(503), 5, now);
        assert!(!ejected(&c, 1));
        // 50% of four hosts is two.
        let c = cluster_with(
            4,
            OutlierDetection {
                max_ejection_percent: Some(UInt32Value { value: 50 }),
                ..Default::default()
            },
        );
        for i in 0..4 {
            report(&c, i, Outcome::Response(500), 5, now);
        }
        let n = (0..4).filter(|&i| ejected(&c, i)).count();
        assert_eq!(n, 2);
        assert_eq!(stat(&c, "ejections_active"), 2);
    }

    #[test]
    fn gateway_failures_are_detected_but_not_enforced_by_default() {
        let c = cluster_with(
            2,
            OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 10 }),
                consecutive_gateway_failure: Some(UInt32Value { value: 3 }),
                ..od()
            },
        );
        let now = Instant::now();
        report(&c, 0, Outcome::Response(502), 3, now);
        assert!(!ejected(&c, 0));
        assert_eq!(
            stat(&c, "ejections_detected_consecutive_gateway_failure"),
            1
        );
        assert_eq!(
            stat(&c, "ejections_enforced_consecutive_gateway_failure"),
            0
        );
        let c = cluster_with(
            2,
            OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 10 }),
                consecutive_gateway_failure: Some(UInt32Value { value: 3 }),
                enforcing_consecutive_gateway_failure: Some(UInt32Value { value: 100 }),
                ..od()
            },
        );
        // A 500 is a 5xx but not a gateway failure: it breaks the run.
        report(&c, 0, Outcome::Response(503), 2, now);
        report(&c, 0, Outcome::Response(500), 1, now);
        report(&c, 0, Outcome::Response(504), 2, now);
        assert!(!ejected(&c, 0));
        report(&c, 0, Outcome::Response(502), 1, now);
        assert!(ejected(&c, 0));
    }

    #[test]
    fn local_origin_failures_count_as_gateway_errors_unless_split() {
        let now = Instant::now();
        let c = cluster_with(2, od());
        // Connect failures are 503s, timeouts 504s, resets 503s.
        report(&c, 0, Outcome::ConnectFailed, 2, now);
        report(&c, 0, Outcome::Timeout, 1, now);
        report(&c, 0, Outcome::Reset, 1, now);
        assert!(!ejected(&c, 0));
        report(&c, 0, Outcome::ConnectFailed, 1, now);
        assert!(ejected(&c, 0));

        let split = OutlierDetection {
            split_external_local_origin_errors: true,
            ..od()
        };
        let c = cluster_with(2, split.clone());
        // 5xx responses and local failures are counted apart.
        report(&c, 0, Outcome::Response(500), 4, now);
        report(&c, 0, Outcome::ConnectFailed, 4, now);
        assert!(!ejected(&c, 0));
        report(&c, 0, Outcome::ConnectFailed, 1, now);
        assert!(ejected(&c, 0));
        assert_eq!(
            stat(&c, "ejections_enforced_consecutive_local_origin_failure"),
            1
        );
        // A connection that was made resets the local-origin run, so resets
        // and timeouts after connecting never add up.
        let c = cluster_with(2, split);
        report(&c, 0, Outcome::Reset, 10, now);
        report(&c, 0, Outcome::Timeout, 10, now);
        assert!(!ejected(&c, 0));
        // TCP proxy connections are local-origin successes.
        report(&c, 1, Outcome::ConnectFailed, 4, now);
        report(&c, 1, Outcome::Connected, 1, now);
        report(&c, 1, Outcome::ConnectFailed, 4, now);
        assert!(!ejected(&c, 1));
    }

    #[test]
    fn uneject_after_base_time_times_ejections_with_backoff_decay() {
        let c = cluster_with(2, od());
        let t0 = Instant::now();
        report(&c, 0, Outcome::Response(500), 5, t0);
        assert!(ejected(&c, 0));
        c.outlier_tick(t0 + Duration::from_secs(10));
        c.outlier_tick(t0 + Duration::from_secs(29));
        assert!(ejected(&c, 0));
        let t1 = t0 + Duration::from_secs(30);
        c.outlier_tick(t1);
        assert!(!ejected(&c, 0));
        assert_eq!(stat(&c, "ejections_active"), 0);
        assert!(c.pick(&LbContext::default()).is_some());
        // Ejected again right away: now for 2 x 30s.
        report(&c, 0, Outcome::Response(500), 5, t1);
        assert!(ejected(&c, 0));
        assert_eq!(c.all_hosts[0].state.outlier.num_ejections(), 2);
        c.outlier_tick(t1 + Duration::from_secs(59));
        assert!(ejected(&c, 0));
        let t2 = t1 + Duration::from_secs(60);
        c.outlier_tick(t2);
        assert!(!ejected(&c, 0));
        // Healthy ticks (each an interval after un-ejection) decay the back-off.
        c.outlier_tick(t2 + Duration::from_secs(10));
        c.outlier_tick(t2 + Duration::from_secs(20));
        assert_eq!(c.all_hosts[0].state.outlier.lock().eject_time_backoff, 0);
        let t3 = t2 + Duration::from_secs(30);
        report(&c, 0, Outcome::Response(500), 5, t3);
        c.outlier_tick(t3 + Duration::from_secs(30));
        assert!(!ejected(&c, 0), "back to the base ejection time");
    }

    #[test]
    fn ejection_time_is_capped_by_max_ejection_time() {
        let c = cluster_with(
            2,
            OutlierDetection {
                base_ejection_time: Some(PbDuration {
                    seconds: 10,
                    nanos: 0,
                }),
                max_ejection_time: Some(PbDuration {
                    seconds: 25,
                    nanos: 0,
                }),
                ..od()
            },
        );
        let mut t = Instant::now();
        for _ in 0..5 {
            report(&c, 0, Outcome::Response(500), 5, t);
            assert!(ejected(&c, 0));
            t += Duration::from_secs(25);
            c.outlier_tick(t);
            assert!(!ejected(&c, 0));
        }
    }

    #[test]
    fn success_rate_ejects_the_outlier_on_the_interval() {
        let c = cluster_with(
            5,
            OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 0 }),
                ..od()
            },
        );
        let t0 = Instant::now();
        for i in 0..5 {
            for n in 0..100 {
                let status = if i == 2 && n % 2 == 0 { 500 } else { 200 };
                c.report_outcome_at(&c.all_hosts[i].state, Outcome::Response(status), t0);
            }
        }
        // The first tick moves the counts into the evaluated bucket...
        c.outlier_tick(t0);
        assert!(ejected(&c, 2));
        assert_eq!(stat(&c, "ejections_enforced_success_rate"), 1);
        let sr = c.health_state().success_rate().expect("numbers");
        assert!((sr.average - 90.0).abs() < 1e-9);
        assert!((sr.ejection_threshold - 52.0).abs() < 1e-9);
        assert_eq!(c.all_hosts[0].state.outlier.success_rate(), Some(100.0));
        // ... and the next one evaluates an empty interval.
        c.outlier_tick(t0 + Duration::from_secs(10));
        assert!(c.health_state().success_rate().is_none());
    }

    #[test]
    fn failure_percentage_needs_enforcement() {
        let mk = |enforce: u32| {
            cluster_with(
                5,
                OutlierDetection {
                    consecutive_5xx: Some(UInt32Value { value: 0 }),
                    enforcing_success_rate: Some(UInt32Value { value: 0 }),
                    enforcing_failure_percentage: Some(UInt32Value { value: enforce }),
                    ..od()
                },
            )
        };
        for enforce in [0, 100] {
            let c = mk(enforce);
            let t0 = Instant::now();
            for i in 0..5 {
                for n in 0..50 {
                    let status = if i == 4 && n % 10 != 0 { 503 } else { 200 };
                    c.report_outcome_at(&c.all_hosts[i].state, Outcome::Response(status), t0);
                }
            }
            c.outlier_tick(t0);
            assert_eq!(stat(&c, "ejections_detected_failure_percentage"), 1);
            assert_eq!(ejected(&c, 4), enforce == 100);
        }
    }

    #[test]
    fn hosts_keep_their_state_across_updates_and_stats_carry_on() {
        let mut p = proto("carry", &addrs(3));
        p.outlier_detection = Some(od());
        let c1 = build(&p, None);
        let now = Instant::now();
        report(&c1, 0, Outcome::Response(500), 4, now);
        // An EDS/CDS update builds a new value; the router may still hold c1.
        let c2 = build(&p, Some(&c1));
        report(&c1, 0, Outcome::Response(500), 1, now);
        assert!(ejected(&c2, 0));
        // The new value's balancer was refreshed through the stale one.
        for _ in 0..10 {
            let picked = c2.pick(&LbContext::default()).expect("a host");
            assert!(!Arc::ptr_eq(&picked.state, &c2.all_hosts[0].state));
        }
        assert_eq!(stat(&c2, "ejections_enforced_total"), 1);
        // Removing outlier detection un-ejects.
        p.outlier_detection = None;
        let c3 = build(&p, Some(&c2));
        assert!(!ejected(&c3, 0));
        assert!(c3.outlier_stat_values().is_empty());
    }

    #[test]
    fn active_health_check_success_unejects() {
        let c = cluster_with(2, od());
        let now = Instant::now();
        report(&c, 0, Outcome::Response(500), 5, now);
        assert!(ejected(&c, 0));
        c.outlier_on_hc_success(&c.all_hosts[0].state, now);
        assert!(!ejected(&c, 0));
        let c = cluster_with(
            2,
            OutlierDetection {
                successful_active_health_check_uneject_host: Some(BoolValue { value: false }),
                ..od()
            },
        );
        report(&c, 0, Outcome::Response(500), 5, now);
        c.outlier_on_hc_success(&c.all_hosts[0].state, now);
        assert!(ejected(&c, 0));
    }

    #[tokio::test]
    async fn the_interval_timer_unejects() {
        let c = cluster_with(
            2,
            OutlierDetection {
                interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 20_000_000,
                }),
                base_ejection_time: Some(PbDuration {
                    seconds: 0,
                    nanos: 50_000_000,
                }),
                ..od()
            },
        );
        c.report_outcome(&c.all_hosts[0], Outcome::Response(500));
        for _ in 0..4 {
            c.report_outcome(&c.all_hosts[0], Outcome::Response(500));
        }
        assert!(ejected(&c, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while ejected(&c, 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!ejected(&c, 0));
    }
}
