//! The few hand rules that complement the learned model where the data is
//! thin: out-of-memory (no example in the training set) and the timeout
//! wording of CI systems the training logs do not come from. They are
//! checked only on the lines near the end of the log and around the chosen
//! evidence, never on the whole log: a `Killed` compiler early in a build
//! that went on (koalaman/shellcheck's logs) is not the failure.

/// Which rule matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleHit {
    Timeout,
    Oom,
}

/// Literal (lower-case) phrases of out-of-memory failures.
const OOM_PHRASES: &[&str] = &[
    // JVM: "Exception in thread "main" java.lang.OutOfMemoryError: Java heap space".
    "java.lang.outofmemoryerror",
    // Node.js/V8: "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory".
    "javascript heap out of memory",
    // ENOMEM from libc: "bash: fork: Cannot allocate memory", "mmap ... Cannot allocate memory".
    "cannot allocate memory",
    // Kernel OOM killer, git, GHC, cc1plus: "Out of memory: Killed process 1234 (java)",
    // "fatal: Out of memory, malloc failed", "ghc: out of memory",
    // "virtual memory exhausted: Cannot allocate memory".
    "out of memory",
    "memory exhausted",
    // Go build killed by the OOM killer: "signal: killed".
    "signal: killed",
];

/// Literal (lower-case) phrases of a job or step running out of time.
const TIMEOUT_PHRASES: &[&str] = &[
    // Travis: "No output has been received in the last 10m0s, this potentially indicates a stalled build".
    "no output has been received in the last",
    // Travis: "The job exceeded the maximum time limit for jobs, and has been terminated."
    "exceeded the maximum time limit",
    // GitHub Actions: "The job running on runner X has exceeded the maximum execution time of 360 minutes."
    "exceeded the maximum execution time",
    // GitLab: "ERROR: Job failed: execution took longer than 1h0m0s seconds".
    "execution took longer than",
    // Jenkins build-timeout plugin: "Build timed out (after 10 minutes). Marking the build as failed."
    "build timed out (after",
    // Azure Pipelines: "##[error]The job running on agent Hosted Agent ran longer than the
    // maximum time of 60 minutes. For more information, see https://go.microsoft.com/fwlink/?linkid=2077134",
    // and its older "The job exceeded the maximum allowed time of 01:00:00 and was stopped."
    "ran longer than the maximum time of",
    "exceeded the maximum allowed time of",
    // CircleCI's no-output timeout: "Too long with no output (exceeded 10m0s): context deadline exceeded".
    "too long with no output (exceeded",
];

/// Literal (lower-case) phrases of a test or command killed for time
/// (mocha, JVM/Scala futures, Erlang common test, PHP run-tests, XCTest,
/// the shell's `timeout` command). Checked only on the chosen evidence
/// lines: by the labelling precedence, a test that timed out is a timeout.
const TEST_TIMEOUT_PHRASES: &[&str] = &[
    "timeout of",
    "timed out",
    "timeoutexception",
    "timetrap_timeout",
    "exited with 124",
    "wait failed: exceeded timeout",
];

/// A test or command killed for time, in one evidence line.
pub fn test_timeout(line: &[u8], scratch: &mut Vec<u8>) -> bool {
    scratch.clear();
    scratch.extend(line.iter().map(u8::to_ascii_lowercase));
    let low: &[u8] = scratch;
    TEST_TIMEOUT_AC.is_match(low)
}

/// Any of a list of phrases (one automaton per list, built once per process
/// instead of a substring searcher per phrase and line).
fn phrases(list: &[&str]) -> aho_corasick::AhoCorasick {
    aho_corasick::AhoCorasick::new(list).expect("the rule phrases are valid patterns")
}

/// Build the rules' phrase automata now, not on the first log.
pub fn warm() {
    for ac in [&TIMEOUT_AC, &OOM_AC, &TEST_TIMEOUT_AC] {
        std::sync::LazyLock::force(ac);
    }
}

static TIMEOUT_AC: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| phrases(TIMEOUT_PHRASES));
static OOM_AC: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| phrases(OOM_PHRASES));
static TEST_TIMEOUT_AC: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| phrases(TEST_TIMEOUT_PHRASES));

/// Check one normalised line. `scratch` is reused for the lower-case copy.
pub fn check(line: &[u8], scratch: &mut Vec<u8>) -> Option<RuleHit> {
    scratch.clear();
    scratch.extend(line.iter().map(u8::to_ascii_lowercase));
    let low: &[u8] = scratch;
    if TIMEOUT_AC.is_match(low) {
        return Some(RuleHit::Timeout);
    }
    if OOM_AC.is_match(low) || killed(line) || exit_137(low) {
        return Some(RuleHit::Oom);
    }
    None
}

/// Python's `MemoryError` and the shell's report of a SIGKILLed job
/// ("Killed", "line 9:  16 Killed  cabal build", "Killed: 9").
fn killed(line: &[u8]) -> bool {
    let t = line.trim_ascii();
    if t == b"Killed" || t.starts_with(b"Killed: 9") || t.starts_with(b"MemoryError") {
        return true;
    }
    static MEMORY_ERROR: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"MemoryError"));
    if MEMORY_ERROR.find(line).is_some_and(|p| {
        p == 0 || !line[p - 1].is_ascii_alphanumeric() || line[..p].ends_with(b"OutOf")
    }) {
        return true;
    }
    // "<pid> Killed <command>" as printed by bash for a job.
    let mut it = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mut prev: Option<&[u8]> = None;
    for w in it.by_ref() {
        if w == b"Killed" {
            return prev.is_some_and(|p| p.iter().all(u8::is_ascii_digit));
        }
        prev = Some(w);
    }
    false
}

/// Exit status 137 (128 + SIGKILL): "exit code 137", "exited with 137",
/// "make: *** [all] Error 137", "Process completed with exit code 137.".
fn exit_137(low: &[u8]) -> bool {
    let mut from = 0;
    static N137: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"137"));
    while let Some(p) = N137.find(&low[from..]) {
        let at = from + p;
        let end = at + 3;
        let before = &low[..at];
        let bounded = low.get(end).is_none_or(|c| !c.is_ascii_digit());
        if bounded
            && (before.ends_with(b"code ")
                || before.ends_with(b"status ")
                || before.ends_with(b"exited with ")
                || before.ends_with(b"error "))
        {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(s: &str) -> Option<RuleHit> {
        check(s.as_bytes(), &mut Vec::new())
    }

    #[test]
    fn oom_wordings() {
        for s in [
            "Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space",
            "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory",
            "bash: fork: Cannot allocate memory",
            "/usr/bin/compile-shellcheck: line 9:    16 Killed                  cabal build",
            "Killed",
            "MemoryError",
            "E   MemoryError: Unable to allocate 8.00 GiB",
            "make: *** [all] Error 137",
            "##[error]Process completed with exit code 137.",
            "signal: killed",
        ] {
            assert_eq!(hit(s), Some(RuleHit::Oom), "{s}");
        }
    }

    #[test]
    fn timeout_wordings() {
        for s in [
            "No output has been received in the last 10m0s, this potentially indicates a stalled build or something wrong with the build itself.",
            "The job exceeded the maximum time limit for jobs, and has been terminated.",
            "The job running on runner GitHub Actions 2 has exceeded the maximum execution time of 360 minutes.",
            "ERROR: Job failed: execution took longer than 1h0m0s seconds",
            "Build timed out (after 10 minutes). Marking the build as failed.",
            // As Azure Pipelines and CircleCI print them (quoted in their
            // users' public issues: microsoft/azure-pipelines-agent#3842,
            // microsoft/azure-pipelines-yaml#227, nspcc-dev/neo-go#2436).
            "##[error]The job running on agent Hosted Agent ran longer than the maximum time of 60 minutes. For more information, see https://go.microsoft.com/fwlink/?linkid=2077134",
            "The job exceeded the maximum allowed time of 01:00:00 and was stopped.",
            "Too long with no output (exceeded 10m0s): context deadline exceeded",
        ] {
            assert_eq!(hit(s), Some(RuleHit::Timeout), "{s}");
        }
    }

    #[test]
    fn near_misses() {
        for s in [
            "test_killed_process ... ok",
            "The process was killed by the user",
            "Processed 1370 files",
            "exit code 1",
            "1 test failed in 137 ms",
            "MyMemoryErrorHandler initialised",
            "context deadline exceeded",
            "Retrying: too long since the last output",
        ] {
            assert_eq!(hit(s), None, "{s}");
        }
    }
}
