package harness

// One way to run a server the tests need (Postern, the Vault dev server, the OAuth server, Dovecot,
// Postfix): Process.
//
//  1. StartProcess starts the command with its output kept in memory, appended to a log file and
//     copied to any other writer, in a process group of its own when asked (a server that forks
//     workers), and with SIGKILL sent to it should the test binary die.
//  2. WaitReady polls a probe (a socket that accepts, a file that appears, a line in the log)
//     until it holds; the process exiting first, or the context ending, is an error carrying the
//     output's tail.
//  3. Stop asks the process to end (SIGTERM, or ProcessOptions.Stop for a server stopped by its
//     own command), waits StopTimeout, then sends SIGKILL; Signal, Kill, Wait and Exited cover
//     the fault tests.
//  4. StopAtCleanup registers Stop as a cleanup of the test and, when the test failed, writes the
//     output's tail to the test log.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// DefaultStopTimeout is how long Stop waits for a process to end before it kills it.
const DefaultStopTimeout = 10 * time.Second

// ProcessOptions configure StartProcess.
type ProcessOptions struct {
	// Name names the process in errors and in the test log, e.g. "postern".
	Name string
	// Path is the program; Args its arguments.
	Path string
	Args []string
	// Dir is the working directory; empty means the test's.
	Dir string
	// Env is the environment; nil means the harness's own.
	Env []string
	// LogFile, when set, receives the output too (appended).
	LogFile string
	// Output, when set, receives the output too: a buffer that outlives one run, say.
	Output io.Writer
	// Group starts the process in a process group of its own and signals the whole group, for a
	// server whose workers must end with it.
	Group bool
	// Stop, when set, asks the process to end instead of SIGTERM (e.g. `postfix stop`); Stop then
	// waits StopTimeout for it as for SIGTERM.
	Stop func(ctx context.Context) error
	// Kill, when set, runs before SIGKILL when the process did not end in time, for processes
	// that are not the started one (a daemon's master that left the process group).
	Kill func()
	// StopTimeout is how long Stop waits before SIGKILL; zero means DefaultStopTimeout.
	StopTimeout time.Duration
}

// Process is a running (or ended) command started by StartProcess.
type Process struct {
	opts ProcessOptions
	cmd  *exec.Cmd
	out  *syncBuffer
	file *os.File
	done chan struct{}
	err  error // how the process ended; read after done is closed

	stopOnce sync.Once
	stopErr  error
}

// StartProcess starts the command and returns at once; WaitReady waits until it serves.
func StartProcess(opts ProcessOptions) (*Process, error) {
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	p := &Process{opts: opts, out: &syncBuffer{}, done: make(chan struct{})}
	w := []io.Writer{p.out}
	if opts.LogFile != "" {
		f, err := os.OpenFile(opts.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("starting %s: opening its log file: %w", opts.Name, err)
		}
		p.file = f
		w = append(w, f)
	}
	if opts.Output != nil {
		w = append(w, opts.Output)
	}
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Dir = opts.Dir
	cmd.Env = opts.Env
	cmd.Stdout = io.MultiWriter(w...)
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: opts.Group, Pdeathsig: syscall.SIGKILL}
	// A worker that outlives its master must not keep Wait reading the output forever.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		p.closeLog()
		return nil, fmt.Errorf("starting %s (%s): %w", opts.Name, opts.Path, err)
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		p.closeLog()
		close(p.done)
	}()
	return p, nil
}

func (p *Process) closeLog() {
	if p.file != nil {
		_ = p.file.Close()
	}
}

// WaitReady calls probe every 20 ms until it reports true or ctx ends, and fails as soon as the
// process exits. A probe's error means "not yet"; the last one is reported if ctx ends. Errors
// carry the last 100 lines of the output.
func (p *Process) WaitReady(ctx context.Context, probe func() (bool, error)) error {
	var last error
	err := poll(ctx, 20*time.Millisecond, func() (bool, error) {
		select {
		case <-p.done:
			return false, fmt.Errorf("%s exited before it was ready: %v", p.opts.Name, p.err)
		default:
		}
		ok, err := probe()
		last = err
		return ok && err == nil, nil
	})
	if err == nil {
		return nil
	}
	if errors.Is(err, errTimeout) && last != nil {
		err = fmt.Errorf("%w (last probe: %v)", err, last)
	}
	return fmt.Errorf("waiting for %s: %w\n--- %s output\n%s", p.opts.Name, err, p.opts.Name, tail(p.Log(), 100))
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits until the process has ended, or ctx ends.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s to exit: %w", p.opts.Name, context.Cause(ctx))
	}
}

// Signal sends sig to the process (to its group with ProcessOptions.Group).
func (p *Process) Signal(sig os.Signal) error {
	if ended, _ := p.Exited(); ended {
		return fmt.Errorf("signalling %s: it has exited", p.opts.Name)
	}
	if s, ok := sig.(syscall.Signal); ok && p.opts.Group {
		return syscall.Kill(-p.cmd.Process.Pid, s)
	}
	return p.cmd.Process.Signal(sig)
}

// Kill ends the process with SIGKILL, as a crash or the kernel's OOM killer would, and waits for
// it.
func (p *Process) Kill() error {
	if ended, _ := p.Exited(); ended {
		return fmt.Errorf("killing %s: it had already exited", p.opts.Name)
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing %s: %w", p.opts.Name, err)
	}
	<-p.done
	return nil
}

// Stop asks the process to end (SIGCONT, in case it was paused, then SIGTERM or
// ProcessOptions.Stop), waits StopTimeout, then kills it. It returns an error when it had to
// kill. Safe to call more than once.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Process) stop() error {
	if ended, _ := p.Exited(); ended {
		return nil
	}
	_ = p.Signal(syscall.SIGCONT)
	if p.opts.Stop != nil {
		ctx, cancel := context.WithTimeout(context.Background(), p.opts.StopTimeout)
		err := p.opts.Stop(ctx)
		cancel()
		if err != nil {
			_ = p.Signal(syscall.SIGTERM)
		}
	} else {
		_ = p.Signal(syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(p.opts.StopTimeout):
	}
	if p.opts.Kill != nil {
		p.opts.Kill()
	}
	_ = p.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not stop within %s and was killed", p.opts.Name, p.opts.StopTimeout)
}

// Log returns what the process wrote to its standard output and error so far.
func (p *Process) Log() string { return p.out.String() }

// StopAtCleanup registers Stop as a cleanup of t; when t failed, the cleanup writes the last
// lines of log() (nil means the process's output) to the test log.
func (p *Process) StopAtCleanup(t T, log func() string) {
	t.Helper()
	if log == nil {
		log = p.Log
	}
	stopAtCleanup(t, p.opts.Name, p.Stop, log)
}

// stopAtCleanup registers stop as a cleanup of t; when t failed, the cleanup writes the last 300
// lines of log() to the test log. Parts that restart their process (Postern, Vault) register
// their own Stop and Log with it.
func stopAtCleanup(t T, name string, stop func() error, log func() string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			defer func() { t.Logf("--- %s output:\n%s", name, tail(log(), 300)) }()
		}
		began := time.Now()
		err := stop()
		t.Logf("%s stopped in %s", name, time.Since(began).Round(time.Millisecond))
		if err != nil {
			t.Logf("stopping %s: %v", name, err)
		}
	})
}
