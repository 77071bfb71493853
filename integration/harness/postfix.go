package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Postfix is a private Postfix instance: its own configuration directory, queue, data directory and
// log file, with every daemon outside a chroot. It is started with `postfix -c ConfigDir start`.
type Postfix struct {
	// Hostname is the instance's myhostname.
	Hostname string
	// Dir holds everything below.
	Dir string
	// ConfigDir holds main.cf and master.cf.
	ConfigDir string
	// QueueDir is queue_directory.
	QueueDir string
	// DataDir is data_directory, owned by postfix.
	DataDir string
	// LogFile is maillog_file.
	LogFile string

	services string   // master.cf text after the standard services
	proc     *Process // `postfix start-fg`, while it runs
}

// standardServices are Debian's master.cf services that a relay and a virtual-mailbox server need,
// with chroot off (column five) so that absolute paths in a temporary directory work.
const standardServices = `# ==========================================================================
# service type  private unpriv  chroot  wakeup  maxproc command + args
#               (yes)   (yes)   (no)    (never) (100)
# ==========================================================================
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// newPostfix lays out an instance in dir with a base main.cf (loopback only, no local delivery,
// short retry times, log to a file) and the standard services; callers append their own
// settings and listeners before Start.
func newPostfix(dir, hostname string) (*Postfix, error) {
	p := &Postfix{
		Hostname:  hostname,
		Dir:       dir,
		ConfigDir: filepath.Join(dir, "etc"),
		QueueDir:  filepath.Join(dir, "queue"),
		DataDir:   filepath.Join(dir, "data"),
		LogFile:   filepath.Join(dir, "maillog"),
	}
	if err := mkdirs(p.Dir, p.ConfigDir, p.QueueDir, p.DataDir); err != nil {
		return nil, err
	}
	if err := chownTo(p.DataDir, "postfix"); err != nil {
		return nil, err
	}
	main := fmt.Sprintf(`# Private Postfix instance of Postern's integration tests.
compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
mail_owner = postfix
myhostname = %[3]s
mydomain = %[3]s
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
smtpd_peername_lookup = no
smtp_host_lookup = native
biff = no
notify_classes =
in_flow_delay = 0s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maillog_file = %[4]s
maillog_file_prefixes = %[5]s
`, p.QueueDir, p.DataDir, hostname, p.LogFile, dir)
	if err := os.WriteFile(p.mainCF(), []byte(main), 0o644); err != nil {
		return nil, fmt.Errorf("writing main.cf: %w", err)
	}
	if err := p.writeMaster(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Postfix) mainCF() string   { return filepath.Join(p.ConfigDir, "main.cf") }
func (p *Postfix) masterCF() string { return filepath.Join(p.ConfigDir, "master.cf") }

// AppendMain appends text to main.cf; later settings override earlier ones.
func (p *Postfix) AppendMain(text string) error {
	if err := appendFile(p.mainCF(), text); err != nil {
		return err
	}
	return p.settle()
}

// settle dates the files of ConfigDir a few seconds back. Postfix rereads a table or main.cf
// changed within the current second, in 300 ms steps, until its time stamp is in the past (it
// could still be being written); the harness writes whole files, so that wait would only add up to
// two seconds to every postconf, start and reload.
func (p *Postfix) settle() error {
	entries, err := os.ReadDir(p.ConfigDir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", p.ConfigDir, err)
	}
	past := time.Now().Add(-10 * time.Second)
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(p.ConfigDir, e.Name())
		if err := os.Chtimes(path, past, past); err != nil {
			return fmt.Errorf("dating %s back: %w", path, err)
		}
	}
	return nil
}

// SetServices replaces the master.cf text that follows the standard services (listeners and
// extra transports). It takes effect at the next Start or Reload.
func (p *Postfix) SetServices(text string) error {
	p.services = text
	return p.writeMaster()
}

func (p *Postfix) writeMaster() error {
	text := standardServices + p.services
	if err := os.WriteFile(p.masterCF(), []byte(text), 0o644); err != nil {
		return fmt.Errorf("writing master.cf: %w", err)
	}
	return p.settle()
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", path, err)
	}
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	if _, err := f.WriteString("\n" + text); err != nil {
		f.Close()
		return fmt.Errorf("appending to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	return nil
}

// Postconf sets main.cf parameters in place ("name=value"), as `postconf -c ConfigDir -e` does.
func (p *Postfix) Postconf(ctx context.Context, settings ...string) error {
	args := append([]string{"-c", p.ConfigDir, "-e"}, settings...)
	if _, err := run(ctx, "", "postconf", args...); err != nil {
		return fmt.Errorf("setting %v in %s: %w", settings, p.ConfigDir, err)
	}
	return p.settle()
}

// Param returns the effective value of one main.cf parameter.
func (p *Postfix) Param(ctx context.Context, name string) (string, error) {
	out, _, err := runSplit(ctx, "postconf", "-c", p.ConfigDir, "-x", "-h", name)
	if err != nil {
		return "", fmt.Errorf("reading %s of %s: %w", name, p.ConfigDir, err)
	}
	return strings.TrimSpace(out), nil
}

// PostmapQuery looks key up in table with `postmap -c ConfigDir -q` and returns the value, or
// found=false when the table has no entry (postmap's exit status 1).
func (p *Postfix) PostmapQuery(ctx context.Context, key, table string) (value string, found bool, err error) {
	out, stderr, err := runSplit(ctx, "postmap", "-c", p.ConfigDir, "-q", key, table)
	if err != nil {
		if stderr == "" && out == "" {
			return "", false, nil
		}
		return "", false, fmt.Errorf("looking %s up in %s: %w", key, table, err)
	}
	return strings.TrimSpace(out), true, nil
}

// ConfigWarnings returns every warning postconf prints while reading main.cf, master.cf and the
// master.cf -o overrides: unknown or unused parameters, bad values, bad service entries.
func (p *Postfix) ConfigWarnings(ctx context.Context) ([]string, error) {
	var warnings []string
	for _, mode := range []string{"-n", "-M", "-P"} {
		_, stderr, err := runSplit(ctx, "postconf", "-c", p.ConfigDir, mode)
		if err != nil {
			return nil, fmt.Errorf("checking %s of %s: %w", mode, p.ConfigDir, err)
		}
		for _, l := range strings.Split(stderr, "\n") {
			if l = strings.TrimSpace(l); l != "" && !contains(warnings, l) {
				warnings = append(warnings, l)
			}
		}
	}
	return warnings, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Start runs the instance in the foreground (`postfix start-fg`: its master stays a child of the
// harness) and waits until the master says it has started, which it logs once its listeners are
// open. On failure the error carries what postfix printed, `postfix check` and the log.
func (p *Postfix) Start(ctx context.Context) error {
	path, err := lookPath("postfix")
	if err != nil {
		return err
	}
	started := strings.Count(p.Log(), postfixStarted)
	proc, err := StartProcess(ProcessOptions{Name: "postfix " + p.Hostname, Path: path,
		Args: []string{"-c", p.ConfigDir, "start-fg"}, StopTimeout: 10 * time.Second,
		// The master makes a session of its own: it is stopped as an operator does, and found
		// by its pid file should that fail.
		Stop: func(ctx context.Context) error {
			_, err := run(ctx, "", "postfix", "-c", p.ConfigDir, "stop")
			return err
		},
		Kill: func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = run(ctx, "", "postfix", "-c", p.ConfigDir, "abort")
			if pid, err := readPID(p.pidFile()); err == nil && !processGone(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		},
	})
	if err != nil {
		return err
	}
	p.proc = proc
	err = proc.WaitReady(ctx, func() (bool, error) {
		return strings.Count(p.Log(), postfixStarted) > started, nil
	})
	if err != nil {
		return fmt.Errorf("starting postfix %s: %w\n%s", p.Hostname, err, p.Diagnose(ctx, ""))
	}
	return nil
}

// postfixStarted is what the master logs once it is initialised, its listeners open.
const postfixStarted = ": daemon started -- version "

// Diagnose returns what explains a failure: extra output, `postfix check` and the log's tail.
func (p *Postfix) Diagnose(ctx context.Context, extra string) string {
	var b strings.Builder
	if extra != "" {
		fmt.Fprintf(&b, "--- output\n%s\n", strings.TrimSpace(extra))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	out, err := run(ctx, "", "postfix", "-c", p.ConfigDir, "check")
	if err != nil {
		fmt.Fprintf(&b, "--- postfix -c %s check: %v\n", p.ConfigDir, err)
	} else {
		fmt.Fprintf(&b, "--- postfix -c %s check\n%s\n", p.ConfigDir, strings.TrimSpace(out))
	}
	fmt.Fprintf(&b, "--- %s\n%s", p.LogFile, tail(p.Log(), 80))
	return b.String()
}

func (p *Postfix) pidFile() string { return filepath.Join(p.QueueDir, "pid", "master.pid") }

// Running reports whether the instance's master process runs.
func (p *Postfix) Running() bool {
	pid, err := readPID(p.pidFile())
	return err == nil && !processGone(pid)
}

// Reload makes the master reread main.cf and master.cf (new, changed and removed listeners).
// The master applies it asynchronously.
func (p *Postfix) Reload(ctx context.Context) error {
	if _, err := run(ctx, "", "postfix", "-c", p.ConfigDir, "reload"); err != nil {
		return fmt.Errorf("reloading postfix %s: %w", p.Hostname, err)
	}
	return nil
}

// Stop stops the instance (`postfix stop`) and waits for its master to exit, killing it after
// ten seconds.
func (p *Postfix) Stop() error {
	if p.proc == nil {
		return nil
	}
	return p.proc.Stop()
}

// Log returns the instance's log so far.
func (p *Postfix) Log() string { return readFile(p.LogFile) }

// LogWarnings returns the log lines that carry a warning, error, fatal or panic.
func (p *Postfix) LogWarnings() []string {
	var out []string
	for _, l := range strings.Split(p.Log(), "\n") {
		for _, k := range []string{" warning: ", " error: ", " fatal: ", " panic: "} {
			if strings.Contains(l, k) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// WaitLog waits until a log line matches re and returns it.
func (p *Postfix) WaitLog(ctx context.Context, re *regexp.Regexp) (string, error) {
	var line string
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		sc := bufio.NewScanner(strings.NewReader(p.Log()))
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		for sc.Scan() {
			if re.MatchString(sc.Text()) {
				line = sc.Text()
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("waiting for a log line of %s matching %s: %w", p.Hostname, re, err)
	}
	return line, nil
}

// LogLines returns the log lines that match re.
func (p *Postfix) LogLines(re *regexp.Regexp) []string {
	var out []string
	for _, l := range strings.Split(p.Log(), "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// QueuedMessage is one message of `postqueue -j`.
type QueuedMessage struct {
	QueueName   string            `json:"queue_name"`
	QueueID     string            `json:"queue_id"`
	ArrivalTime int64             `json:"arrival_time"`
	MessageSize int64             `json:"message_size"`
	Sender      string            `json:"sender"`
	Recipients  []QueuedRecipient `json:"recipients"`
}

// QueuedRecipient is one recipient of a queued message; DelayReason says why it waits.
type QueuedRecipient struct {
	Address     string `json:"address"`
	DelayReason string `json:"delay_reason"`
}

// Queue lists the messages in the instance's queue.
func (p *Postfix) Queue(ctx context.Context) ([]QueuedMessage, error) {
	out, _, err := runSplit(ctx, "postqueue", "-c", p.ConfigDir, "-j")
	if err != nil {
		return nil, fmt.Errorf("listing the queue of %s: %w", p.Hostname, err)
	}
	var msgs []QueuedMessage
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		var m QueuedMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			return nil, fmt.Errorf("parsing postqueue -j line %q: %w", l, err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// Flush asks the queue manager to retry every deferred message now.
func (p *Postfix) Flush(ctx context.Context) error {
	if _, err := run(ctx, "", "postqueue", "-c", p.ConfigDir, "-f"); err != nil {
		return fmt.Errorf("flushing the queue of %s: %w", p.Hostname, err)
	}
	return nil
}

// WaitQueueEmpty waits until the queue holds no message.
func (p *Postfix) WaitQueueEmpty(ctx context.Context) error {
	var last []QueuedMessage
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		q, err := p.Queue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		last = q
		return len(q) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the queue of %s to empty (still %s): %w", p.Hostname, describeQueue(last), err)
	}
	return nil
}

// WaitQueue waits until cond holds for the queue and returns that queue.
func (p *Postfix) WaitQueue(ctx context.Context, cond func([]QueuedMessage) bool) ([]QueuedMessage, error) {
	var last []QueuedMessage
	err := poll(ctx, 100*time.Millisecond, func() (bool, error) {
		q, err := p.Queue(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return false, nil
			}
			return false, err
		}
		last = q
		return cond(q), nil
	})
	if err != nil {
		return last, fmt.Errorf("waiting for the queue of %s (now %s): %w", p.Hostname, describeQueue(last), err)
	}
	return last, nil
}

func describeQueue(q []QueuedMessage) string {
	if len(q) == 0 {
		return "empty"
	}
	var parts []string
	for _, m := range q {
		var rs []string
		for _, r := range m.Recipients {
			rs = append(rs, fmt.Sprintf("%s (%s)", r.Address, r.DelayReason))
		}
		parts = append(parts, fmt.Sprintf("%s %s from <%s> to %s", m.QueueName, m.QueueID, m.Sender, strings.Join(rs, ", ")))
	}
	return strings.Join(parts, "; ")
}

// startPostfix starts p and registers its stop, and the dump of its log when t failed, as
// cleanups of t.
func startPostfix(t T, p *Postfix) {
	t.Helper()
	stopAtCleanup(t, "postfix "+p.Hostname, p.Stop, func() string {
		return fmt.Sprintf("(%s)\n%s", p.LogFile, tail(p.Log(), 200))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	began := time.Now()
	if err := p.Start(ctx); err != nil {
		t.Fatalf("%v", err)
	}
	t.Logf("postfix %s started in %s", p.Hostname, time.Since(began).Round(time.Millisecond))
}

// KeepFlushing flushes the queue now and then every interval until stop is called or ctx ends,
// as an operator would after fixing a fault. One flush can miss a message: a flush that arrives
// while the message is being delivered skips it ("still being delivered"), and the message then
// waits for its next scheduled retry.
func (p *Postfix) KeepFlushing(ctx context.Context, interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			_ = p.Flush(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}
