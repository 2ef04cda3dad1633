package chaos

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"
)

// Fault kinds.
const (
	KillCapture  = "kill capture"
	KillSink     = "kill sink"
	KillCombined = "kill combined"
	KillLeader   = "kill leader"
	StopKafka    = "stop kafka"
	StopCass     = "stop cassandra"
)

// Phases a fault can fall in.
const (
	PhaseBackfill  = "backfill"
	PhaseStreaming = "streaming"
	PhaseRewind    = "rewind"
	PhaseRepair    = "repair"
)

// Fault is one injected fault and what recovering from it took.
type Fault struct {
	At     time.Duration // since the run started
	Kind   string
	Target string // the daemon killed, or the server stopped
	Phase  string
	// Length is how long a server stayed stopped.
	Length time.Duration
	// Recovery is restart -> applying again for a kill, outage end -> lag
	// under 5 s for an outage.
	Recovery time.Duration
	// Leader is, for a kill of the leader, how long until another daemon led.
	Leader time.Duration
	// PeakRSS is the highest resident set of any daemon during an outage;
	// PeakRSSBy is each daemon's.
	PeakRSS   int64
	PeakRSSBy map[string]int64
	Note      string
}

// Freeze stops a process with SIGSTOP for at most limit and returns the
// function that resumes it (SIGCONT). The resume is idempotent: call it in a
// deferred path as well as where the outage ends, so that a failing or
// panicking test never leaves a server of the shared stack frozen. A test
// binary killed by go test's -timeout runs no deferred code, so a watchdog
// process (sh: sleep, then kill -CONT) resumes the server after limit even
// then; resume stops the watchdog.
func Freeze(pid int, limit time.Duration) (resume func() error, err error) {
	watchdog := exec.Command("sh", "-c", fmt.Sprintf("sleep %d; kill -CONT %d", int(limit.Seconds())+1, pid))
	// Its own process group: it outlives the test binary's.
	watchdog.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := watchdog.Start(); err != nil {
		return func() error { return nil }, fmt.Errorf("start the SIGCONT watchdog: %w", err)
	}
	stopWatchdog := func() {
		watchdog.Process.Kill()
		watchdog.Wait()
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		stopWatchdog()
		return func() error { return nil }, fmt.Errorf("SIGSTOP %d: %w", pid, err)
	}
	var once sync.Once
	var cerr error
	return func() error {
		once.Do(func() {
			cerr = syscall.Kill(pid, syscall.SIGCONT)
			stopWatchdog()
		})
		return cerr
	}, nil
}

// PIDFile reads a pid written by deploy/local/stack.
func PIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return 0, fmt.Errorf("pid %d of %s: %w", pid, path, err)
	}
	return pid, nil
}

// RSS is a process's resident set size in bytes (VmRSS of /proc/PID/status).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseRSS(string(b))
}

func parseRSS(status string) (int64, error) {
	for _, l := range strings.Split(status, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// Summary is the end of a run.
type Summary struct {
	Seed                        uint64
	Variant                     string
	Wall                        time.Duration
	Ops                         int
	Rate                        float64
	Compared, Missing, Extra    int
	Different, DeadLetters      int
	PeakRSS, PeakRSSBeforeFault int64
	ReconcileDivergent          int64
	ReconcileCompared           int64
	// Rounds the leaders ran on their schedule during the run, and those
	// of them that reported divergent rows.
	Rounds, RoundsDivergent int
}

// WriteTable prints the faults and the outcome, the table docs/testing.md
// and the README show.
func WriteTable(w io.Writer, faults []Fault, s Summary) {
	var cells bytes.Buffer
	tw := tabwriter.NewWriter(&cells, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tat\tfault\ttarget\tphase\toutage\trecovery\tnote")
	for i, f := range faults {
		outage, rec := "-", fmtDur(f.Recovery)
		if f.Length > 0 {
			outage = fmtDur(f.Length)
		}
		note := f.Note
		if f.Leader > 0 {
			note = strings.TrimSpace(note + " new leader after " + fmtDur(f.Leader))
		}
		if f.PeakRSS > 0 {
			note = strings.TrimSpace(fmt.Sprintf("%s peak RSS %s", note, mib(f.PeakRSS)))
			if len(f.PeakRSSBy) > 0 {
				var by []string
				for _, name := range slices.Sorted(maps.Keys(f.PeakRSSBy)) {
					by = append(by, fmt.Sprintf("%s %.0f", name, float64(f.PeakRSSBy[name])/(1<<20)))
				}
				note += " (" + strings.Join(by, ", ") + ")"
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i+1, fmtDur(f.At), f.Kind, f.Target, f.Phase, outage, rec, note)
	}
	tw.Flush()
	// tabwriter pads the last column too; the table is pasted into docs.
	for _, l := range strings.SplitAfter(cells.String(), "\n") {
		io.WriteString(w, strings.TrimRight(l, " \n")+strings.Repeat("\n", strings.Count(l, "\n")))
	}
	kills, worst, worstOutage := 0, time.Duration(0), time.Duration(0)
	for _, f := range faults {
		if f.Length == 0 {
			kills++
			worst = max(worst, f.Recovery)
		} else {
			worstOutage = max(worstOutage, f.Recovery)
		}
	}
	fmt.Fprintf(w, "seed %d, variant %s, %s, %d live operations (%.0f/s)\n", s.Seed, s.Variant, fmtDur(s.Wall), s.Ops, s.Rate)
	fmt.Fprintf(w, "kills %d (slowest restart -> applying %s), outages %d (slowest outage end -> lag < 5 s %s)\n",
		kills, fmtDur(worst), len(faults)-kills, fmtDur(worstOutage))
	fmt.Fprintf(w, "rows compared %d: missing %d, extra %d, different %d; dead-lettered %d\n",
		s.Compared, s.Missing, s.Extra, s.Different, s.DeadLetters)
	fmt.Fprintf(w, "reconcile round after the run: %d rows compared, %d divergent; scheduled rounds during it: %d, %d divergent\n",
		s.ReconcileCompared, s.ReconcileDivergent, s.Rounds, s.RoundsDivergent)
	fmt.Fprintf(w, "peak RSS of a daemon: %s during outages, %s before any outage\n", mib(s.PeakRSS), mib(s.PeakRSSBeforeFault))
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
