package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/integration/bench/sink"
	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
	"github.com/postern/postern/sidecar/store/boltstore"
	"github.com/postern/postern/sidecar/store/vaultstore"
	"github.com/postern/postern/vault"
)

// The distant upstream: what Postern saves Postfix when the organisation's server is 10–100 ms
// away and many projects send at once.
//
//  1. A second authenticating sink (STARTTLS + AUTH PLAIN) lets each mailbox hold at most
//     MaxConnsPerMailbox signed-in connections and answers one more with 421 4.3.2, as Exchange
//     Online does. A LatencyProxy in front of it adds the round-trip time of the cell.
//  2. Every project has its own mailbox there: path A's projects in Postern's store (each may open
//     MaxConnsPerMailbox connections, Postern's default), path B's senders in the front Postfix's
//     sender-dependent relayhost and SASL maps, all to the proxy.
//  3. A cell submits Count messages spread evenly over the first N projects' senders (in turn, so
//     that each mailbox's messages are spread over the cell), several per mailbox
//     (Options.DistantPerMailbox, 5 by default: 5,000 messages over 1,000 projects). A client's
//     server sends many messages, and a connection pool only helps a mailbox's second message:
//     with one message per mailbox every delivery would find its mailbox cold, and path A would
//     pay the same TCP, TLS and AUTH round trips as path B. The cell runs with the
//     front at Postfix's default process limit (100) and a destination concurrency of 100 for both
//     paths, and waits for the messages at the sink (or DistantCellLimit, then the rest is deleted from the
//     queue and counted as not delivered).
//  4. It reads each message's delays=a/b/c/d from the front's log, the connections and refused
//     sign-ins the sink saw, and Postern's CPU time, and samples Postfix's slots busy: the
//     front's delivery agents delivering a message (slots.go).

// MaxConnsPerMailbox is the sink's limit of concurrent connections per mailbox in the distant
// cells (Exchange Online's).
const MaxConnsPerMailbox = 3

// DistantCellLimit bounds one distant cell: what has not arrived by then is counted as undelivered.
const DistantCellLimit = 90 * time.Second

// Paths of the distant cells.
const (
	PathDistantA = "distant-postern"
	PathDistantB = "distant-direct"
)

// distantSenderA is the sender of path A's project i; distantSenderB of path B's mailbox i.
func distantSenderA(i int) string { return fmt.Sprintf("d%04d@a%04d.distant.test", i, i) }
func distantSenderB(i int) string { return fmt.Sprintf("e%04d@b%04d.distant.test", i, i) }

// distant is the setup of the distant cells inside a Relay.
type distant struct {
	sink     *sink.Sink
	proxy    *LatencyProxy
	projects int
	users    map[string]string // the sink's mailboxes: A's project i is d%04d, B's sender i is e%04d
}

// startDistant starts the distant sink and its proxy for n projects per path.
func startDistant(r harness.T, rl *Relay, n int) *distant {
	d := &distant{projects: n, users: map[string]string{}}
	for i := range n {
		d.users[fmt.Sprintf("d%04d", i)] = harness.NewID()
		d.users[fmt.Sprintf("e%04d", i)] = harness.NewID()
	}
	var err error
	if d.sink, err = sink.Start(sink.Options{TLS: rl.TLSConfig, Users: d.users, MaxConnsPerUser: MaxConnsPerMailbox, Hostname: "distant.test"}); err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { d.sink.Close() })
	if d.proxy, err = StartLatencyProxy(d.sink.Addr()); err != nil {
		r.Fatalf("%v", err)
	}
	r.Cleanup(func() { d.proxy.Close() })
	return d
}

// projects returns path A's projects: one mailbox each behind the proxy.
func (d *distant) projectsA(caPEM string) []project.Project {
	ps := make([]project.Project, d.projects)
	for i := range ps {
		user := fmt.Sprintf("d%04d", i)
		ps[i] = project.Project{
			Name: fmt.Sprintf("distant-%04d", i), Enabled: true,
			Senders:  []string{distantSenderA(i)},
			Upstream: project.Upstream{Host: "127.0.0.1", Port: d.proxy.Port(), TLS: project.TLSStartTLS, CAPEM: caPEM},
			Auth:     project.Auth{Type: project.AuthBasic, Username: user, Password: secret.New(d.users[user])},
			Limits:   project.Limits{MaxConnections: MaxConnsPerMailbox},
		}
	}
	return ps
}

// frontMaps writes path B's sender-dependent maps (texthash: no postmap needed) into dir and
// returns the main.cf lines that add them to the relay's.
func (d *distant) frontMaps(dir string, proxyPort int) (relayhost, sasl, transport string, err error) {
	var rh, sa, tr strings.Builder
	for i := range d.projects {
		s, user := distantSenderB(i), fmt.Sprintf("e%04d", i)
		fmt.Fprintf(&rh, "%s [127.0.0.1]:%d\n", s, proxyPort)
		fmt.Fprintf(&sa, "%s %s:%s\n", s, user, d.users[user])
		fmt.Fprintf(&tr, "%s bdirect:\n", s)
	}
	files := map[string]string{"distant_relayhost": rh.String(), "distant_sasl": sa.String(), "distant_transport": tr.String()}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return "", "", "", err
		}
	}
	return "texthash:" + filepath.Join(dir, "distant_relayhost"), "texthash:" + filepath.Join(dir, "distant_sasl"),
		"texthash:" + filepath.Join(dir, "distant_transport"), nil
}

// DistantCell is one distant measurement: Count messages over Projects projects of one path at
// one round-trip time.
type DistantCell struct {
	Path     string  `json:"path"`
	RTTms    float64 `json:"rtt_ms"`
	Projects int     `json:"projects"`
	Size     int     `json:"size_bytes"`
	Round    int     `json:"round"`
	Count    int     `json:"messages"`
	// Delivered arrived at the sink within DistantCellLimit; Seconds is until the last of them.
	Delivered int     `json:"delivered"`
	Seconds   float64 `json:"seconds"`
	Rate      float64 `json:"msgs_per_sec"`
	// DelayP50/P99 are Postfix's time from arrival to delivery of the delivered messages (the sum
	// of delays=a/b/c/d in its log), in seconds; QueueP50/P99 only a+b, the wait before a
	// delivery slot took the message (including deferrals).
	DelayP50 float64 `json:"delay_p50_s"`
	DelayP99 float64 `json:"delay_p99_s"`
	QueueP50 float64 `json:"queue_delay_p50_s"`
	QueueP99 float64 `json:"queue_delay_p99_s"`
	// Deferrals are the front's status=deferred lines for the cell; Refused the sign-ins the sink
	// answered 421 4.3.2 (over the per-mailbox connection limit).
	Deferrals int64 `json:"deferrals"`
	Refused   int64 `json:"refused_421"`
	// ConnsPerMsg are the connections the sink accepted per delivered message.
	SinkConns   int64   `json:"sink_conns"`
	ConnsPerMsg float64 `json:"conns_per_msg"`
	// PosternCPUms is Postern's CPU time per delivered message (path A), in milliseconds.
	PosternCPUms float64 `json:"postern_cpu_ms_per_msg"`
	// SlotsBusyMean and SlotsBusyMax are the front Postfix's delivery agents busy delivering
	// (slots.go), sampled every slotSampleInterval until the last message arrived.
	SlotsBusyMean float64 `json:"slots_busy_mean"`
	SlotsBusyMax  int     `json:"slots_busy_max"`
}

// MeasureDistant runs one distant cell.
func (rl *Relay) MeasureDistant(ctx context.Context, path string, rtt time.Duration, projects, size, count, round int) (DistantCell, error) {
	d := rl.distant
	c := DistantCell{Path: path, RTTms: float64(rtt.Milliseconds()), Projects: projects, Size: size, Round: round, Count: count}
	if err := rl.SetConcurrency(ctx, 100); err != nil {
		return c, err
	}
	d.proxy.SetRTT(rtt)
	rcpt := fmt.Sprintf("%s-%d-%dms-p%d-r%d-%s@sink.test", path, size, rtt.Milliseconds(), projects, round, harness.NewID()[:6])
	sender := distantSenderA
	if path == PathDistantB {
		sender = distantSenderB
	}
	before := d.sink.Counts()
	pid := rl.Postern.PID()
	cpu0, _ := procCPU(pid)

	slots := startSlots(rl.Front.QueueDir)
	defer slots.Stop()
	t0 := time.Now()
	subErr := make(chan error, 1)
	go func() { subErr <- submitMany(ctx, rl.Front.SMTPAddr(), sender, projects, rcpt, size, count, 20) }()
	limit := time.Now().Add(DistantCellLimit)
	var err error
	for {
		if a := d.sink.Arrivals(rcpt); a.Count >= int64(count) {
			break
		}
		if time.Now().After(limit) {
			break
		}
		select {
		case err = <-subErr:
			if err != nil {
				return c, fmt.Errorf("submitting: %w", err)
			}
			subErr = nil
		case <-ctx.Done():
			return c, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	c.SlotsBusyMean, c.SlotsBusyMax = slots.Stop()
	a := d.sink.Arrivals(rcpt)
	after := d.sink.Counts()
	cpu1, _ := procCPU(pid)
	c.Delivered = int(a.Count)
	if c.Delivered > 0 {
		c.Seconds = a.Last.Sub(t0).Seconds()
		c.Rate = float64(c.Delivered) / c.Seconds
		c.PosternCPUms = 1000 * (cpu1 - cpu0) / float64(c.Delivered)
		c.ConnsPerMsg = float64(after.Conns-before.Conns) / float64(c.Delivered)
	}
	c.SinkConns, c.Refused = after.Conns-before.Conns, after.Refused-before.Refused
	if path != PathDistantA {
		c.PosternCPUms = 0
	}
	// What did not arrive in time is deleted, so that the next cell starts with an empty queue.
	if c.Delivered < count {
		postsuper := "postsuper"
		if _, err := os.Stat("/usr/sbin/postsuper"); err == nil {
			postsuper = "/usr/sbin/postsuper"
		}
		if out, err := exec.CommandContext(ctx, postsuper, "-c", rl.Front.ConfigDir, "-d", "ALL").CombinedOutput(); err != nil {
			return c, fmt.Errorf("deleting what did not arrive: %v: %s", err, out)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := rl.Front.WaitQueueEmpty(wctx); err != nil {
		return c, err
	}
	c.DelayP50, c.DelayP99, c.QueueP50, c.QueueP99, c.Deferrals = rl.frontDelays(rcpt)
	return c, nil
}

var delaysRE = regexp.MustCompile(`delays=([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+),.*status=(sent|deferred)`)

// frontDelays reads the front's log lines for rcpt: percentiles of delays=a/b/c/d of the sent
// messages (total, and a+b) and the number of deferrals.
func (rl *Relay) frontDelays(rcpt string) (p50, p99, q50, q99 float64, deferrals int64) {
	var total, queue []float64
	for _, l := range rl.Front.LogLines(regexp.MustCompile(regexp.QuoteMeta("to=<" + rcpt + ">"))) {
		m := delaysRE.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if m[5] == "deferred" {
			deferrals++
			continue
		}
		var v [4]float64
		for i := range v {
			v[i], _ = strconv.ParseFloat(m[i+1], 64)
		}
		total = append(total, v[0]+v[1]+v[2]+v[3])
		queue = append(queue, v[0]+v[1])
	}
	return percentile(total, 50), percentile(total, 99), percentile(queue, 50), percentile(queue, 99), deferrals
}

// percentile is the p-th percentile of xs (nearest rank), 0 for none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// submitMany hands count messages of size bytes to the front Postfix over sessions connections,
// the senders taken in turn from the first projects ones, all to rcpt.
func submitMany(ctx context.Context, addr string, sender func(int) string, projects int, rcpt string, size, count, sessions int) error {
	body := distantBody(size)
	next := make(chan int, count)
	for i := range count {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for range min(sessions, count) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := c.Hello("app.test"); err != nil {
				errs <- err
				return
			}
			for i := range next {
				if ctx.Err() != nil {
					return
				}
				if err := c.SendMail(sender(i%projects), []string{rcpt}, strings.NewReader(body)); err != nil {
					errs <- fmt.Errorf("message %d: %w", i, err)
					return
				}
			}
			c.Quit()
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// distantBody is a message of about size bytes in 78-character lines.
func distantBody(size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Subject: distant %d\r\nMessage-ID: <%d@app.test>\r\n\r\n", size, rand.Int64())
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// writeDistantProjects writes path A's distant projects into Postern's store before it starts:
// the embedded store NewPostern made, or Vault (v) when the relay keeps its projects there.
func writeDistantProjects(ctx context.Context, rl *Relay, v *harness.Vault, ps []project.Project) error {
	if v != nil {
		st, err := vaultstore.Open(ctx, vault.Options{Address: v.Addr, Auth: vault.Auth{Token: vault.Secret(v.RootToken)}}, vaultstore.Options{})
		if err != nil {
			return err
		}
		defer st.Close()
		if _, err := st.PutProjects(ctx, ps); err != nil {
			return fmt.Errorf("writing %d distant projects to Vault: %w", len(ps), err)
		}
		return nil
	}
	st, err := boltstore.Open(ctx, boltstore.Options{Path: filepath.Join(rl.Postern.Dir, "store.db"), KeyFile: filepath.Join(rl.Postern.Dir, "store.key")})
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.PutProjects(ctx, ps); err != nil {
		return fmt.Errorf("writing %d distant projects: %w", len(ps), err)
	}
	return nil
}
