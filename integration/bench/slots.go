package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Postfix's slots busy: how many of the front Postfix's delivery agents (smtp and lmtp processes,
// children of its master) are delivering a message at once. An agent delivering holds the
// message's queue file open in the active queue; an idle one, waiting for the next delivery or
// for max_idle, holds none. A slotSampler looks every slotSampleInterval.

// slotSampleInterval is how often a slotSampler looks: often enough for a cell of seconds, rarely
// enough to cost the cell nothing measurable (a look reads /proc for about 100 processes).
const slotSampleInterval = 100 * time.Millisecond

// slotSampler samples the busy delivery agents of one Postfix until stop.
type slotSampler struct {
	master  int
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	samples []int
}

// startSlots starts sampling the delivery agents of the Postfix whose queue directory is queueDir.
func startSlots(queueDir string) *slotSampler {
	s := &slotSampler{stop: make(chan struct{}), done: make(chan struct{})}
	if b, err := os.ReadFile(filepath.Join(queueDir, "pid", "master.pid")); err == nil {
		s.master, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	go func() {
		defer close(s.done)
		if s.master == 0 {
			return
		}
		t := time.NewTicker(slotSampleInterval)
		defer t.Stop()
		for {
			n := busyAgents(s.master)
			s.mu.Lock()
			s.samples = append(s.samples, n)
			s.mu.Unlock()
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling (again: nothing) and returns the mean and the largest number of busy
// agents seen.
func (s *slotSampler) Stop() (mean float64, most int) {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return 0, 0
	}
	sum := 0
	for _, n := range s.samples {
		sum += n
		most = max(most, n)
	}
	return float64(sum) / float64(len(s.samples)), most
}

// busyAgents counts master's smtp and lmtp children with a queue file of the active queue open.
func busyAgents(master int) int {
	busy := 0
	for _, pid := range children(master) {
		comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
		if err != nil {
			continue
		}
		if c := strings.TrimSpace(string(comm)); c != "smtp" && c != "lmtp" {
			continue
		}
		fdDir := "/proc/" + strconv.Itoa(pid) + "/fd"
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join(fdDir, fd.Name())); err == nil && strings.Contains(l, "/active/") {
				busy++
				break
			}
		}
	}
	return busy
}

// children returns the process ids whose parent is pid.
func children(pid int) []int {
	var out []int
	// /proc/PID/task/TID/children lists each thread's children (CONFIG_PROC_CHILDREN); else
	// scan /proc.
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	for i, name := range tasks {
		b, err := os.ReadFile(name)
		if err != nil {
			break
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
		if i == len(tasks)-1 {
			return out
		}
	}
	out = out[:0]
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
		rest := string(b)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		if f := strings.Fields(rest); len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}
