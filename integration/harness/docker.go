package harness

// The front Postfix in a container: with POSTERN_IT_POSTFIX=docker and a Docker engine, a test can
// run the operator's Postfix from the image contrib/postfix/Dockerfile builds (target postfix),
// with the host's network and Postern's directory mounted at the same path, so that what the
// socketmap answers (postern:unix:<dir>/lmtp.sock) names the same socket inside the container.
//
//  1. DockerRequested says whether POSTERN_IT_POSTFIX=docker; RequireDocker skips the test when
//     it is not, or when no engine answers (the only skip of the suite, asked for by a variable).
//  2. StartDockerFront builds the image (docker build, cached by the engine) and runs it with
//     the entry point's arguments: a loopback submission listener, the relayhost, postern_run_dir.
//  3. The test submits with DockerFront.Transact; at cleanup the container is removed, and its
//     log is written to the test log when the test failed.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DockerImage is the tag given to the postfix image the harness builds.
const DockerImage = "postern-it-postfix:latest"

// DockerRequested reports whether POSTERN_IT_POSTFIX=docker asks for the containerised Postfix.
func DockerRequested() bool { return os.Getenv("POSTERN_IT_POSTFIX") == "docker" }

// DockerEngine reports whether a Docker engine answers, and why not.
func DockerEngine(ctx context.Context) (bool, string) {
	path, err := exec.LookPath("docker")
	if err != nil {
		return false, "the docker command is not installed"
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version", "--format", "{{.Server.Version}}").CombinedOutput()
	if err != nil {
		return false, "no Docker engine answers (" + strings.TrimSpace(lastLine(string(out))) + ")"
	}
	return true, ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// RequireDocker skips t unless POSTERN_IT_POSTFIX=docker and a Docker engine answers.
func RequireDocker(t interface {
	Helper()
	Skipf(string, ...any)
}) {
	t.Helper()
	if !DockerRequested() {
		t.Skipf("the containerised Postfix runs only with POSTERN_IT_POSTFIX=docker")
		return
	}
	if ok, why := DockerEngine(context.Background()); !ok {
		t.Skipf("POSTERN_IT_POSTFIX=docker, but %s: skipping the containerised Postfix", why)
	}
}

// DockerFrontOptions configure StartDockerFront.
type DockerFrontOptions struct {
	// RunDir is Postern's directory (postern_run_dir), mounted at the same path.
	RunDir string
	// RelayAddr is host:port of the relayhost for mail not routed through Postern.
	RelayAddr string
}

// DockerFront is the operator's Postfix in a container on the host's network.
type DockerFront struct {
	// Container is the container's ID.
	Container string
	// SMTPPort is the submission listener on 127.0.0.1.
	SMTPPort int
}

// SMTPAddr is the submission listener's host:port.
func (f *DockerFront) SMTPAddr() string { return fmt.Sprintf("127.0.0.1:%d", f.SMTPPort) }

// Transact submits m like Front.Transact.
func (f *DockerFront) Transact(ctx context.Context, m *Mail) (Transaction, error) {
	return transact(ctx, f.SMTPAddr(), "app.test", m)
}

// Log returns the container's output (Postfix logs to its standard output).
func (f *DockerFront) Log(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "docker", "logs", f.Container).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(docker logs %s: %v)", f.Container, err)
	}
	return string(out)
}

// StartDockerFront builds the postfix image from contrib/postfix/Dockerfile and runs it; the
// container is removed at cleanup.
func StartDockerFront(t T, opts DockerFrontOptions) *DockerFront {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatalf("%v", err)
	}
	build := exec.CommandContext(ctx, "docker", "build", "-f", filepath.Join(root, "contrib", "postfix", "Dockerfile"),
		"--target", "postfix", "-t", DockerImage, root)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the postfix image: %v\n%s", err, tail(string(out), 60))
	}
	port, err := FreePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	relayHost, relayPort, ok := strings.Cut(opts.RelayAddr, ":")
	if !ok {
		t.Fatalf("DockerFrontOptions.RelayAddr %q is not host:port", opts.RelayAddr)
	}
	args := []string{"run", "-d", "--network", "host", "-v", opts.RunDir + ":" + opts.RunDir, DockerImage,
		fmt.Sprintf("smtp/inet=127.0.0.1:%d inet n - n - - smtpd", port),
		"inet_interfaces=127.0.0.1", "inet_protocols=ipv4", "mynetworks=127.0.0.0/8",
		fmt.Sprintf("relayhost=[%s]:%s", relayHost, relayPort), "smtp_tls_security_level=none",
		"smtpd_relay_restrictions=permit_mynetworks, reject",
		"postern_run_dir=" + opts.RunDir}
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("starting the postfix container: %v\n%s", err, out)
	}
	f := &DockerFront{Container: strings.TrimSpace(lastLine(string(out))), SMTPPort: port}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			t.Logf("--- postfix container %s log:\n%s", f.Container, tail(f.Log(ctx), 200))
		}
		if out, err := exec.CommandContext(ctx, "docker", "rm", "-f", f.Container).CombinedOutput(); err != nil {
			t.Logf("removing the postfix container: %v\n%s", err, out)
		}
	})
	wait, cancelWait := context.WithTimeout(ctx, time.Minute)
	defer cancelWait()
	if err := waitListening(wait, f.SMTPAddr()); err != nil {
		t.Fatalf("%v\n%s", err, tail(f.Log(ctx), 80))
	}
	return f
}

// OpenSockets makes Postern's unix sockets reachable by any user: the postfix user inside a
// container has its own ids, so the group postfix of the host means nothing to it. Only for tests.
func (p *Postern) OpenSockets() error {
	for _, s := range []string{p.LMTPSocket, p.SocketmapSocket, p.MilterSocket} {
		if s == "" {
			continue
		}
		if err := os.Chmod(s, 0o666); err != nil {
			return fmt.Errorf("opening postern's socket %s: %w", s, err)
		}
	}
	return nil
}
