//! The soak's flags, defined once: `cargo xtask soak` takes them and hands them on, unchanged,
//! to the load generator's `soak`, which runs it.

/// How long, how wide and how rough the soak is.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct SoakArgs {
    /// How long the load runs, before the final catch-up and checks.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Streams open at once (clients).
    #[arg(long, default_value_t = 4000)]
    pub streams: u32,
    /// Threads the streams and the writes spread over.
    #[arg(long, default_value_t = 800)]
    pub threads: u32,
    /// Changes committed per second (inserts, and deletes at --delete-share).
    #[arg(long, default_value_t = 100.0)]
    pub write_rate: f64,
    /// Share of the changes that delete a thread's oldest reply.
    #[arg(long, default_value_t = 0.05)]
    pub delete_share: f64,
    /// A client drops its connection after a random time, this long on average (seconds).
    #[arg(long, default_value_t = 60.0)]
    pub disconnect_mean_secs: f64,
    /// The LISTEN connection is terminated this often (seconds).
    #[arg(long, default_value_t = 30)]
    pub kill_every_secs: u64,
    /// The broadcaster's RSS is sampled this often (seconds).
    #[arg(long, default_value_t = 5)]
    pub sample_every_secs: u64,
}

impl SoakArgs {
    /// The same flags as command-line arguments, for handing on to another process.
    pub fn to_args(&self) -> Vec<String> {
        let flags: [(&str, String); 8] = [
            ("--minutes", self.minutes.to_string()),
            ("--streams", self.streams.to_string()),
            ("--threads", self.threads.to_string()),
            ("--write-rate", self.write_rate.to_string()),
            ("--delete-share", self.delete_share.to_string()),
            (
                "--disconnect-mean-secs",
                self.disconnect_mean_secs.to_string(),
            ),
            ("--kill-every-secs", self.kill_every_secs.to_string()),
            ("--sample-every-secs", self.sample_every_secs.to_string()),
        ];
        flags
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_owned(), value])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        soak: SoakArgs,
    }

    #[test]
    fn flags_handed_on_parse_back_to_the_same_settings() {
        let soak = Cli::parse_from([
            "x",
            "--minutes",
            "0.5",
            "--streams",
            "12",
            "--delete-share",
            "0.2",
        ])
        .soak;
        let again = Cli::parse_from(std::iter::once("x".to_owned()).chain(soak.to_args())).soak;
        assert_eq!(again, soak);
    }
}
