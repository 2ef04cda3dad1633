package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestStrayArgumentsAreRefused runs every registered command with a word
// no flag takes, the way a mistyped flag or an unquoted reason arrives
// ("--reason bad reads" leaves "reads"): each must refuse it with exit 2
// before doing anything, instead of dropping it.
func TestStrayArgumentsAreRefused(t *testing.T) {
	// Commands whose first arguments name a subcommand, or are positional.
	sub := map[string][]string{"trace": {"app.users", "x"}, "plan": {"status"}, "checkpoints": {"copy", "--from", "x", "--reason", "r"}, "audit": {"verify"}}
	var names []string
	for _, c := range commands {
		names = append(names, c.Name)
	}
	cases := [][]string{}
	for _, n := range names {
		cases = append(cases, append(append([]string{n}, sub[n]...), "--addr", "127.0.0.1:1", "stray"))
	}
	// The plain audit command too, besides audit verify; pause with the
	// words of an unquoted reason.
	cases = append(cases, []string{"audit", "--addr", "127.0.0.1:1", "stray"},
		[]string{"pause", "--topic", "t", "--reason", "bad", "reads"})
	for _, args := range cases {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			// --addr is not a flag of every command; drop it where unknown.
			var out, errb bytes.Buffer
			code := dispatch(context.Background(), args, &out, &errb)
			if code != 2 || !strings.Contains(errb.String(), "unexpected argument") {
				args2 := dropAddr(args)
				errb.Reset()
				code = dispatch(context.Background(), args2, &out, &errb)
			}
			if code != 2 || !strings.Contains(errb.String(), `unexpected argument "`+args[len(args)-1]+`"`) {
				t.Fatalf("exit %d:\n%s", code, errb.String())
			}
		})
	}
	if len(cases) < 12 {
		t.Fatalf("only %d commands registered", len(cases))
	}
}

func dropAddr(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "--addr" {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}
