// Command postern-bench measures Postern against Postfix relaying directly, end to end with real
// Postfix, and writes a table to stdout, results.json and chart.png (see package
// integration/bench). `make bench` runs it through integration/scripts/bench.sh, which builds
// postern and runs the Go benchmarks first.
//
// It needs root, Postfix (with smtp-source) and the OAuth server's npm packages:
// integration/scripts/install-deps.sh and integration/oauth/install.sh install them (make deps).
//
//	cd integration && go run ./bench/cmd/postern-bench -postern ../bin/postern -out ../bench-results
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/postern/postern/integration/bench"
	"github.com/postern/postern/integration/harness"
)

func main() {
	bin := flag.String("postern", "", "postern binary (required)")
	out := flag.String("out", "bench-results", "directory for results.json and chart.png")
	goBench := flag.String("go-bench", "", "output of the Go benchmarks to include in the summary")
	rounds := flag.Int("rounds", 0, "rounds of every path, size and concurrency (default 3)")
	steps := flag.String("steps", "", "concurrency steps, comma-separated (default 1,10,50)")
	projects := flag.Int("projects", 0, "projects of the scale measurement (default 10000; -1 skips it)")
	noXOAUTH2 := flag.Bool("no-xoauth2", false, "leave the XOAUTH2 measurement out")
	largeProjects := flag.Int("large-projects", 0, "projects of a second, large scale measurement in the file store, e.g. 100000 (default: none)")
	scaleOnly := flag.Bool("scale-only", false, "run only the scale measurements (-projects, -large-projects), without Postfix")
	rtts := flag.String("rtts", "", "round-trip times of the distant cells in ms, comma-separated (default 0,10,30,100; -1 leaves them out)")
	distantProjects := flag.String("distant-projects", "", "projects of the distant cells, comma-separated (default 1,100,1000)")
	perMailbox := flag.Int("distant-per-mailbox", 0, "messages per project's mailbox in a distant cell (default 5)")
	vault := flag.Bool("vault", false, "keep path A's projects in the Vault dev server (POSTERN_VAULTDEV or integration/vaultdev/build.sh)")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "postern-bench: -postern is required")
		os.Exit(2)
	}
	opts := bench.Options{Bin: *bin, Out: *out, GoBench: *goBench, Rounds: *rounds, Projects: *projects, LargeProjects: *largeProjects, SkipXOAUTH2: *noXOAUTH2, ScaleOnly: *scaleOnly, DistantPerMailbox: *perMailbox, Vault: *vault}
	for _, s := range strings.Split(*steps, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "postern-bench: bad concurrency step %q\n", s)
			os.Exit(2)
		}
		opts.Steps = append(opts.Steps, n)
	}

	for _, s := range list(*rtts) {
		opts.RTTs = append(opts.RTTs, time.Duration(s)*time.Millisecond)
	}
	for _, n := range list(*distantProjects) {
		if n < 1 {
			fmt.Fprintf(os.Stderr, "postern-bench: bad number of projects %d\n", n)
			os.Exit(2)
		}
		opts.DistantProjects = append(opts.DistantProjects, n)
	}

	r := bench.NewRunner()
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
		<-c
		r.Fatalf("interrupted")
	}()
	harness.Require(r)
	if !harness.HaveSMTPSource() {
		r.Fatalf("smtp-source (package postfix) is missing: run integration/scripts/install-deps.sh")
	}
	res := bench.Run(r, opts)
	r.Close()
	res.PrintTable(os.Stdout)
	fmt.Printf("\nresults: %s/results.json\nchart:   %s/chart.png\n", *out, *out)
}

// list parses a comma-separated list of integers, exiting on a bad one.
func list(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "postern-bench: bad number %q\n", f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}
