package chaos

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tidemarkhq/tidemark/transform"
	"go.mongodb.org/mongo-driver/bson"
)

// TestEveryGeneratedDocumentTransforms: the workload writes only valid
// documents, so the suite may require 0 dead letters. Every document the
// generator makes, and every one with fields removed as its $unset updates
// remove them, maps to rows without error. (This caught the transform
// refusing {scores: {art: []}}.)
func TestEveryGeneratedDocumentTransforms(t *testing.T) {
	m, err := transform.Parse([]byte(Spec("ks", "db.orders", "db.profiles")))
	if err != nil {
		t.Fatal(err)
	}
	g := NewGen(42)
	apply := func(ns string, d bson.D) {
		t.Helper()
		b, err := bson.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.Apply(ns, b); err != nil {
			t.Fatalf("%s: %v", bson.Raw(b), err)
		}
	}
	kinds := map[string]int{}
	for i := 0; i < 3000; i++ {
		op := g.Next()
		kinds[op.Kind]++
		ns := "db.orders"
		if op.Profiles {
			ns = "db.profiles"
		}
		if op.Doc == nil {
			continue
		}
		apply(ns, op.Doc)
		// The same document with each top-level field an $unset removes.
		for _, u := range [][]string{{"note"}, {"customer"}, {"tags", "items", "status"}, {"emails"}, {"home"}, {"scores"}, {"age"}} {
			var d bson.D
			for _, e := range op.Doc {
				if !contains(u, e.Key) {
					d = append(d, e)
				}
			}
			apply(ns, d)
		}
	}
	for _, k := range []string{OpInsert, OpReplace, OpSet, OpUnset, OpDelete} {
		if kinds[k] == 0 {
			t.Errorf("no %s in 3000 operations: %v", k, kinds)
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// TestGenIsSeeded: one seed, one sequence of choices.
func TestGenIsSeeded(t *testing.T) {
	a, b := NewGen(7), NewGen(7)
	for i := 0; i < 500; i++ {
		x, y := a.Next(), b.Next()
		if bx, by := opBytes(x), opBytes(y); !bytes.Equal(bx, by) {
			t.Fatalf("operation %d differs: %v vs %v", i, x, y)
		}
	}
}

func opBytes(op Op) []byte {
	b, _ := bson.Marshal(bson.D{{Key: "k", Value: op.Kind}, {Key: "id", Value: op.ID}, {Key: "d", Value: op.Doc}, {Key: "u", Value: op.Update}})
	return b
}

func TestSchemaMatchesSpec(t *testing.T) {
	m, err := transform.Parse([]byte(Spec("ks1", "d.orders", "d.profiles")))
	if err != nil {
		t.Fatal(err)
	}
	cql := strings.Join(Schema("ks1"), "\n")
	for _, ns := range m.Namespaces() {
		for _, tbl := range m.Tables(ns) {
			if !strings.Contains(cql, "CREATE TABLE "+tbl.QualifiedName()+" (") {
				t.Errorf("no CREATE TABLE for %s", tbl.QualifiedName())
			}
			for _, c := range tbl.Columns {
				if !strings.Contains(cql, c.Name+" ") {
					t.Errorf("%s.%s is not in the schema", tbl.QualifiedName(), c.Name)
				}
			}
		}
	}
}

func TestRSS(t *testing.T) {
	n, err := parseRSS("Name:\ttidemark\nVmPeak:\t  900 kB\nVmRSS:\t   41236 kB\nThreads: 9\n")
	if err != nil || n != 41236*1024 {
		t.Fatalf("parseRSS = %d, %v", n, err)
	}
	if _, err := parseRSS("Name: x\n"); err == nil {
		t.Fatal("no VmRSS line parsed")
	}
	if n, err := RSS(os.Getpid()); err != nil || n <= 0 {
		t.Fatalf("RSS of this process: %d, %v", n, err)
	}
}

// TestFreeze stops and resumes a child process; resuming twice is harmless
// (the suite resumes in a deferred path and where the outage ends).
func TestFreeze(t *testing.T) {
	if _, err := Freeze(1<<30, time.Second); err == nil {
		t.Fatal("froze a process that does not exist")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	resume, err := Freeze(cmd.Process.Pid, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer resume()
	state := func() string {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		return f[0]
	}
	waitState := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); state() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("state %s, want %s", state(), want)
			}
		}
	}
	waitState("T")
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	waitState("S")

	// Without a resume, the watchdog resumes it after the limit.
	if _, err := Freeze(cmd.Process.Pid, time.Second); err != nil {
		t.Fatal(err)
	}
	waitState("T")
	waitState("S")
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	WriteTable(&b, []Fault{
		{At: 4 * time.Second, Kind: KillCapture, Target: "capture", Phase: PhaseBackfill, Recovery: 300 * time.Millisecond},
		{At: 9 * time.Second, Kind: KillLeader, Target: "sink", Phase: PhaseStreaming, Recovery: time.Second, Leader: 6 * time.Second},
		{At: 20 * time.Second, Kind: StopKafka, Target: "kafka", Phase: PhaseStreaming, Length: time.Minute,
			Recovery: 2 * time.Second, PeakRSS: 40 << 20, PeakRSSBy: map[string]int64{"sink": 40 << 20, "capture": 30 << 20}},
	}, Summary{Seed: 1, Variant: "short", Wall: time.Minute, Ops: 100, Rate: 100, Compared: 10,
		PeakRSS: 40 << 20, PeakRSSBeforeFault: 30 << 20})
	out := b.String()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing spaces: %q", l)
		}
	}
	for _, want := range []string{
		"kill leader   sink", "new leader after 6.0s", "60.0s   2.0s", "peak RSS 40 MiB (capture 30, sink 40)",
		"kills 2 (slowest restart -> applying 1.0s), outages 1 (slowest outage end -> lag < 5 s 2.0s)",
		"rows compared 10: missing 0, extra 0, different 0; dead-lettered 0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
