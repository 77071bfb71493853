package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// cpuSample is the CPU time of every process on the machine, by command name, and of the whole
// machine, at one moment.
type cpuSample struct {
	byPID map[int]procTime
	busy  float64 // seconds all CPUs were busy
	total float64 // seconds of all CPUs
}

// sampleCPU reads /proc/stat and /proc/*/stat. Processes that end between two samples are lost,
// so the breakdown is a lower bound; Postfix's daemons and postern live long.
func sampleCPU() cpuSample {
	s := cpuSample{byPID: map[int]procTime{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			x, _ := strconv.ParseFloat(v, 64)
			s.total += x / 100
			if i != 3 && i != 4 { // idle, iowait
				s.busy += x / 100
			}
		}
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		str := string(b)
		open, close := strings.IndexByte(str, '('), strings.LastIndexByte(str, ')')
		if open < 0 || close < open {
			continue
		}
		comm := str[open+1 : close]
		if strings.HasPrefix(comm, "kworker/") {
			comm = "kworker" // the kernel renames its workers after their current work
		}
		f := strings.Fields(str[close+1:])
		if len(f) < 13 {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		s.byPID[pid] = procTime{comm: comm, secs: (ut + st) / 100}
	}
	return s
}

// procTime is one process's command name and CPU time.
type procTime struct {
	comm string
	secs float64
}

// CPUShare is one command's share of the CPU time used during a measurement.
type CPUShare struct {
	Command string  `json:"command"`
	Seconds float64 `json:"cpu_seconds"`
}

// cpuDelta returns the machine's busy fraction between a and b and the commands that used the
// most CPU, largest first.
func cpuDelta(a, b cpuSample, top int) (busy float64, shares []CPUShare) {
	if d := b.total - a.total; d > 0 {
		busy = (b.busy - a.busy) / d
	}
	byComm := map[string]float64{}
	for pid, v := range b.byPID {
		d := v.secs
		if old, ok := a.byPID[pid]; ok && old.comm == v.comm {
			d -= old.secs
		}
		byComm[v.comm] += d
	}
	for comm, d := range byComm {
		if d > 0.005 {
			shares = append(shares, CPUShare{Command: comm, Seconds: d})
		}
	}
	slices.SortFunc(shares, func(x, y CPUShare) int {
		switch {
		case x.Seconds > y.Seconds:
			return -1
		case x.Seconds < y.Seconds:
			return 1
		}
		return strings.Compare(x.Command, y.Command)
	})
	if len(shares) > top {
		shares = shares[:top]
	}
	return busy, shares
}

func formatShares(shares []CPUShare) string {
	var parts []string
	for _, s := range shares {
		parts = append(parts, fmt.Sprintf("%s %.2fs", s.Command, s.Seconds))
	}
	return strings.Join(parts, ", ")
}
