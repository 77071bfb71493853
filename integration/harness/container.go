package harness

// The operator's Postfix in a container: the postfix image of contrib/postfix/Dockerfile, run on
// the host's network, so that Postern's sockets and listeners on the host are reachable at the
// same names inside it.
//
//  1. Over unix sockets: Postern's directory is mounted at the same path (the volume the README
//     describes), so what the socketmap answers (postern:unix:<dir>/lmtp.sock) names the same
//     socket inside the container; postern_run_dir points there and the image's snippets stay as
//     shipped.
//  2. Over loopback TCP: what `postern postfix-config` prints for Postern's config is mounted at
//     /etc/postfix/postern, where the image's entry point takes it instead of the shipped
//     snippets.
//  3. The test submits with ContainerFront.Transact; at cleanup the container is removed, and its
//     log (Postfix logs to standard output) is written to the test log when the test failed.

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// ContainerFrontOptions configure StartContainerFront.
type ContainerFrontOptions struct {
	// RunDir, when set, is Postern's socket directory: mounted at the same path, and postern_run_dir.
	RunDir string
	// Snippets, when set, is a directory holding main.cf and master.cf as `postern postfix-config`
	// prints them, mounted at /etc/postfix/postern (read-only).
	Snippets string
	// RelayAddr is host:port of the relayhost for mail not routed through Postern.
	RelayAddr string
}

// ContainerFront is the operator's Postfix in a container on the host's network.
type ContainerFront struct {
	// Container is the container's ID.
	Container string
	// SMTPPort is the submission listener on 127.0.0.1.
	SMTPPort int

	engine *Engine
}

// SMTPAddr is the submission listener's host:port.
func (f *ContainerFront) SMTPAddr() string { return fmt.Sprintf("127.0.0.1:%d", f.SMTPPort) }

// Transact submits m like Front.Transact.
func (f *ContainerFront) Transact(ctx context.Context, m *Mail) (Transaction, error) {
	return transact(ctx, f.SMTPAddr(), "app.test", m)
}

// Submit sends m like Front.Submit.
func (f *ContainerFront) Submit(ctx context.Context, m *Mail) (Sent, error) {
	return Client{Addr: f.SMTPAddr(), HeloName: "app.test"}.Send(ctx, m)
}

// Log returns the container's output: Postfix's log, as `docker logs` shows it.
func (f *ContainerFront) Log(ctx context.Context) string {
	out, err := f.engine.Command(ctx, "logs", f.Container).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(%s logs %s: %v)", f.engine.Name, f.Container, err)
	}
	return string(out)
}

// StartContainerFront runs the postfix image (BuildImages) and removes the container at cleanup.
func StartContainerFront(t T, e *Engine, opts ContainerFrontOptions) *ContainerFront {
	t.Helper()
	BuildImages(t, e, PostfixImage)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	port, err := FreePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	relayHost, relayPort, ok := strings.Cut(opts.RelayAddr, ":")
	if !ok {
		t.Fatalf("ContainerFrontOptions.RelayAddr %q is not host:port", opts.RelayAddr)
	}
	args := append([]string{"run", "-d"}, e.RunFlags()...)
	if opts.RunDir != "" {
		args = append(args, "-v", opts.RunDir+":"+opts.RunDir)
	}
	if opts.Snippets != "" {
		args = append(args, "-v", opts.Snippets+":/etc/postfix/postern:ro")
	}
	args = append(args, PostfixImage,
		fmt.Sprintf("smtp/inet=127.0.0.1:%d inet n - n - - smtpd", port),
		"inet_interfaces=127.0.0.1", "inet_protocols=ipv4", "mynetworks=127.0.0.0/8",
		fmt.Sprintf("relayhost=[%s]:%s", relayHost, relayPort), "smtp_tls_security_level=none",
		"smtpd_relay_restrictions=permit_mynetworks, reject")
	if opts.RunDir != "" {
		args = append(args, "postern_run_dir="+opts.RunDir)
	}
	out, err := e.Output(ctx, args...)
	if err != nil {
		t.Fatalf("starting the postfix container: %v", err)
	}
	f := &ContainerFront{Container: strings.TrimSpace(lastLine(out)), SMTPPort: port, engine: e}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			t.Logf("--- postfix container %s log:\n%s", f.Container, tail(f.Log(ctx), 200))
		}
		if _, err := e.Output(ctx, "rm", "-f", f.Container); err != nil {
			t.Logf("removing the postfix container: %v", err)
		}
	})
	if err := waitListening(ctx, f.SMTPAddr()); err != nil {
		t.Fatalf("%v\n%s", err, tail(f.Log(ctx), 80))
	}
	return f
}

// OpenSockets makes Postern's unix sockets reachable by any user: the postfix user inside a
// container has its own ids, so the group postfix of the host means nothing to it. Only for tests.
func (p *Postern) OpenSockets() error {
	for _, s := range []string{p.LMTPSocket, p.SocketmapSocket, p.MilterSocket} {
		if socketNetwork(s) != "unix" {
			continue
		}
		if err := os.Chmod(s, 0o666); err != nil {
			return fmt.Errorf("opening postern's socket %s: %w", s, err)
		}
	}
	return nil
}
