//! Envoy's response flags: why a request ended the way it did, in the short
//! codes that access logs and the `response_flags` metric label carry.

/// Flags in Envoy's bit order, which is also the order they print in.
const CODES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// Envoy's long flag names (`%RESPONSE_FLAGS_LONG%`), in the same order.
const LONG: [&str; 30] = [
    "FailedLocalHealthCheck",
    "NoHealthyUpstream",
    "UpstreamRequestTimeout",
    "LocalReset",
    "UpstreamRemoteReset",
    "UpstreamConnectionFailure",
    "UpstreamConnectionTermination",
    "UpstreamOverflow",
    "NoRouteFound",
    "DelayInjected",
    "FaultInjected",
    "RateLimited",
    "UnauthorizedExternalService",
    "RateLimitServiceError",
    "DownstreamConnectionTermination",
    "UpstreamRetryLimitExceeded",
    "StreamIdleTimeout",
    "InvalidEnvoyRequestHeaders",
    "DownstreamProtocolError",
    "UpstreamMaxStreamDurationReached",
    "ResponseFromCacheFilter",
    "NoFilterConfigFound",
    "DurationTimeout",
    "UpstreamProtocolError",
    "NoClusterFound",
    "OverloadManagerTerminated",
    "DnsResolutionFailed",
    "DropOverLoad",
    "DownstreamRemoteReset",
    "UnconditionalDropOverload",
];

const ALL: [Flag; 30] = [
    Flag::FailedLocalHealthCheck,
    Flag::NoHealthyUpstream,
    Flag::UpstreamRequestTimeout,
    Flag::LocalReset,
    Flag::UpstreamRemoteReset,
    Flag::UpstreamConnectionFailure,
    Flag::UpstreamConnectionTermination,
    Flag::UpstreamOverflow,
    Flag::NoRouteFound,
    Flag::DelayInjected,
    Flag::FaultInjected,
    Flag::RateLimited,
    Flag::UnauthorizedExternalService,
    Flag::RateLimitServiceError,
    Flag::DownstreamConnectionTermination,
    Flag::UpstreamRetryLimitExceeded,
    Flag::StreamIdleTimeout,
    Flag::InvalidEnvoyRequestHeaders,
    Flag::DownstreamProtocolError,
    Flag::UpstreamMaxStreamDurationReached,
    Flag::ResponseFromCacheFilter,
    Flag::NoFilterConfigFound,
    Flag::DurationTimeout,
    Flag::UpstreamProtocolError,
    Flag::NoClusterFound,
    Flag::OverloadManager,
    Flag::DnsResolutionFailed,
    Flag::DropOverload,
    Flag::DownstreamRemoteReset,
    Flag::UnconditionalDropOverload,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    FailedLocalHealthCheck = 0,
    NoHealthyUpstream,
    UpstreamRequestTimeout,
    LocalReset,
    UpstreamRemoteReset,
    UpstreamConnectionFailure,
    UpstreamConnectionTermination,
    UpstreamOverflow,
    NoRouteFound,
    DelayInjected,
    FaultInjected,
    RateLimited,
    UnauthorizedExternalService,
    RateLimitServiceError,
    DownstreamConnectionTermination,
    UpstreamRetryLimitExceeded,
    StreamIdleTimeout,
    InvalidEnvoyRequestHeaders,
    DownstreamProtocolError,
    UpstreamMaxStreamDurationReached,
    ResponseFromCacheFilter,
    NoFilterConfigFound,
    DurationTimeout,
    UpstreamProtocolError,
    NoClusterFound,
    OverloadManager,
    DnsResolutionFailed,
    DropOverload,
    DownstreamRemoteReset,
    UnconditionalDropOverload,
}

impl Flag {
    /// The flag with this short code (`UF`, `NR`...), as access log
    /// `response_flag_filter` names them.
    pub fn from_code(code: &str) -> Option<Self> {
        CODES.iter().position(|c| *c == code).map(|i| ALL[i])
    }
}

/// The flags set on a stream, printed in the order they were set (Envoy
/// keeps them in a list: a retried connect failure prints `URX,UF`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32, [u8; 8], u8);

impl ResponseFlags {
    pub fn set(&mut self, flag: Flag) {
        if self.has(flag) {
            return;
        }
        self.0 |= 1 << flag as u8;
        if let Some(slot) = self.1.get_mut(self.2 as usize) {
            *slot = flag as u8;
            self.2 += 1;
        }
    }

    /// Flag indices in the order they were set (then any beyond the first
    /// eight, in bit order).
    fn ordered(&self) -> impl Iterator<Item = usize> + '_ {
        let listed = &self.1[..self.2 as usize];
        listed.iter().map(|i| *i as usize).chain(
            (0..CODES.len())
                .filter(move |i| self.0 & (1 << i) != 0 && !listed.contains(&(*i as u8))),
        )
    }

    /// `%RESPONSE_FLAGS_LONG%`: long names joined by `,`, `-` when empty.
    pub fn long_string(&self) -> String {
        if self.0 == 0 {
            return "-".into();
        }
        self.ordered()
            .map(|i| LONG[i])
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn has(&self, flag: Flag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for ResponseFlags {
    /// `-` when no flag is set, as in Envoy's access logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for i in self.ordered() {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(CODES[i])?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_codes_in_the_order_set() {
        let mut flags = ResponseFlags::default();
        assert_eq!(flags.to_string(), "-");
        assert_eq!(flags.long_string(), "-");
        flags.set(Flag::UpstreamRetryLimitExceeded);
        flags.set(Flag::UpstreamConnectionFailure);
        flags.set(Flag::UpstreamRetryLimitExceeded);
        // As Envoy 1.40 logs a connect failure after the last retry.
        assert_eq!(flags.to_string(), "URX,UF");
        assert_eq!(
            flags.long_string(),
            "UpstreamRetryLimitExceeded,UpstreamConnectionFailure"
        );
        flags.set(Flag::NoClusterFound);
        assert!(flags.has(Flag::NoClusterFound));
        assert_eq!(flags.to_string(), "URX,UF,NC");
        assert_eq!(Flag::from_code("NR"), Some(Flag::NoRouteFound));
        assert_eq!(
            Flag::from_code("UDO"),
            Some(Flag::UnconditionalDropOverload)
        );
        assert_eq!(Flag::from_code("XX"), None);
    }
}
