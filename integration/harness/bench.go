package harness

// Helpers of the benchmarks (integration/bench): Postfix's own load generator, a process's
// resident memory, Prometheus text values, and extra master.cf services of the front Postfix.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// SMTPSourceOptions describe one run of Postfix's smtp-source.
type SMTPSourceOptions struct {
	// Addr is host:port to submit to.
	Addr string
	// From and To are the envelope sender and recipient.
	From, To string
	// Size is the payload length in bytes (-l); zero leaves smtp-source's default.
	Size int
	// Count is the number of messages (-m).
	Count int
	// Sessions is the number of parallel SMTP sessions (-s); zero means 1.
	Sessions int
	// HeloName is the HELO name (-M); empty means "app.test".
	HeloName string
}

// RunSMTPSource runs smtp-source with opts and waits for it to finish: every message was then
// accepted (smtp-source stops at the first refusal, and the error carries its output).
func RunSMTPSource(ctx context.Context, opts SMTPSourceOptions) error {
	if opts.Sessions <= 0 {
		opts.Sessions = 1
	}
	if opts.HeloName == "" {
		opts.HeloName = "app.test"
	}
	args := []string{
		"-m", strconv.Itoa(opts.Count),
		"-s", strconv.Itoa(opts.Sessions),
		"-f", opts.From,
		"-t", opts.To,
		"-M", opts.HeloName,
	}
	if opts.Size > 0 {
		args = append(args, "-l", strconv.Itoa(opts.Size))
	}
	args = append(args, "inet:"+opts.Addr)
	if _, err := run(ctx, "", "smtp-source", args...); err != nil {
		return fmt.Errorf("submitting %d messages with smtp-source: %w", opts.Count, err)
	}
	return nil
}

// HaveSMTPSource reports whether Postfix's smtp-source is installed.
func HaveSMTPSource() bool {
	_, err := lookPath("smtp-source")
	return err == nil
}

// PID is the process ID of the running postern serve, or 0.
func (p *Postern) PID() int {
	if p.proc == nil {
		return 0
	}
	return p.proc.Pid()
}

// ProcStatusKB returns a field of /proc/PID/status given in kB, such as "VmRSS" or "VmHWM".
func ProcStatusKB(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the status of process %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		v := strings.Fields(rest)
		if len(v) == 0 {
			break
		}
		return strconv.ParseInt(v[0], 10, 64)
	}
	return 0, fmt.Errorf("process %d: no %s in /proc/%d/status", pid, field, pid)
}

// MetricValue returns the value of the sample of a Prometheus text exposition whose name and
// labels (as written, e.g. `postern_upstream_dials_total{project="a"}`) are series, or false.
func MetricValue(text, series string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		name, value, ok := strings.Cut(l, " ")
		if !ok || name != series {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		return v, err == nil
	}
	return 0, false
}

// AddServices appends text to the master.cf services that follow the standard ones (after the
// submission listener and the contrib postern service). It takes effect at the next Start or
// Reload.
func (f *Front) AddServices(text string) error {
	return f.SetServices(f.services + text)
}

// PostfixVersion returns Postfix's mail_version, or "unknown".
func PostfixVersion(ctx context.Context) string {
	out, _, err := runSplit(ctx, "postconf", "-d", "-h", "mail_version")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(out)
}
