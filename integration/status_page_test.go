//go:build integration

package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/postern/postern/integration/harness"
	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/secret"
)

// artifactDir is where tests keep what a person looks at afterwards (screenshots):
// $POSTERN_IT_ARTIFACTS, or integration/artifacts.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("POSTERN_IT_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// statusRows makes n projects: every 7th failing on a refused password, every 11th waiting for
// a sign-in, every 13th degraded by an upstream that is down, the rest ok.
func statusRows(n int) []admin.ProjectStatus {
	now := time.Now()
	rows := make([]admin.ProjectStatus, 0, n)
	for i := range n {
		name := fmt.Sprintf("client-%04d", i)
		r := admin.ProjectStatus{
			Name: name, Enabled: true, Auth: "basic", Upstream: "smtp." + name + ".example:587",
			Senders: []string{"noreply@" + name + ".example"}, State: "ok", Health: "ok",
			LastDelivery: now.Add(-time.Duration(i%50) * time.Minute), SentHour: i % 30, SentDay: i % 400,
			PerMinute: 30, PerDay: 10000,
		}
		switch {
		case i%7 == 3:
			r.State, r.Health, r.HealthReason, r.Since = "unhealthy", "failing", "credential_refused", now.Add(-20*time.Minute)
			r.LastError, r.LastErrorAt, r.Failures = "451 4.7.0 upstream smtp."+name+".example:587 refused the credentials: 535 5.7.8 Authentication credentials invalid", now.Add(-time.Minute), 4
			r.Reason, r.Action = r.LastError, "the upstream refused the username or password: postern project update "+name+" --password-stdin"
		case i%11 == 1:
			r.Auth, r.State, r.Health, r.HealthReason, r.Since = "oauth2", "needs_reauth", "failing", "needs_sign_in", now.Add(-3*time.Hour)
			r.LastError, r.LastErrorAt = "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity", now.Add(-2*time.Minute)
			r.Reason, r.Action = r.LastError, "the mailbox owner must sign in again: postern authorize-link "+name
			r.Expiry = now.Add(-time.Hour)
		case i%13 == 6:
			r.State, r.Health, r.HealthReason, r.Since = "upstream_down", "degraded", "upstream_down", now.Add(-2*time.Minute)
			r.LastError, r.LastErrorAt, r.Failures = "451 4.4.1 dial tcp smtp."+name+".example:587: connect: connection refused", now.Add(-time.Minute), 1
			r.Reason, r.Action = r.LastError, "Postern cannot reach the upstream; mail waits in Postfix's queue and is retried"
		}
		rows = append(rows, r)
	}
	return rows
}

// The status page for hundreds of clients, in headless Chromium with JavaScript off: the summary
// line counts the states, failing projects come first, the filter form works, and the sign-in
// link button makes a link with the admin credential. Screenshots at 5 and at 1,000 projects are
// kept in artifactDir.
func TestStatusPageScreenshots(t *testing.T) {
	t.Parallel()
	browser := harness.StartBrowser(t, harness.BrowserOptions{})
	out := artifactDir(t)
	const readToken, apiToken = "status-read-token-for-the-test", "status-api-token-for-the-test"
	for _, n := range []int{5, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			rows := statusRows(n)
			var links atomic.Int32
			srv := admin.New(admin.Options{
				Version:   "test",
				Projects:  func(context.Context) []admin.ProjectStatus { return append([]admin.ProjectStatus(nil), rows...) },
				ReadToken: secret.New(readToken),
				API:       &admin.APIOptions{Token: secret.New(apiToken)},
				SignInLink: func(_ context.Context, name string) (string, error) {
					links.Add(1)
					return "https://postern.example/signin/l/" + name, nil
				},
			})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			hs := &http.Server{Handler: srv.Handler()}
			go hs.Serve(l)
			defer hs.Close()
			base := "http://" + l.Addr().String()

			ctx, cancel := browser.NewTab()
			defer cancel()
			ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
			defer cancelT()
			auth := func(tok string) {
				t.Helper()
				if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Bearer " + tok}}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
				t.Fatal(err)
			}
			if _, err := chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := chromedp.Call(ctx, emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{Width: 1400, Height: 900, DeviceScaleFactor: 1}); err != nil {
				t.Fatal(err)
			}
			auth(readToken)
			if err := chromedp.Do(ctx, chromedp.Navigate(base+"/status")); err != nil {
				t.Fatal(err)
			}
			summary, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#summary")))
			if err != nil {
				t.Fatal(err)
			}
			firstHealth, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("tbody tr:first-child td:nth-child(2)")))
			if err != nil {
				t.Fatal(err)
			}
			screenshot(t, ctx, filepath.Join(out, fmt.Sprintf("status-%d.jpg", n)))

			var failing, signIn, degraded int
			for _, r := range rows {
				switch {
				case r.HealthReason == "needs_sign_in":
					failing++
					signIn++
				case r.Health == "failing":
					failing++
				case r.Health == "degraded":
					degraded++
				}
			}
			want := fmt.Sprintf("%d projects %d ok %d degraded %d failing %d need sign-in", n, n-failing-degraded, degraded, failing, signIn)
			if got := strings.Join(strings.Fields(summary), " "); got != want {
				t.Errorf("summary %q, want %q", got, want)
			}
			if !strings.HasPrefix(strings.TrimSpace(firstHealth), "failing") && failing > 0 {
				t.Errorf("first row's health %q, want failing first", firstHealth)
			}

			// The filter, submitted without JavaScript.
			err = chromedp.Do(ctx,
				chromedp.SetValue(chromedp.CSS(`select[name="state"]`), "needs_sign_in"),
				chromedp.Click(chromedp.CSS(`form.filter button`)),
			)
			if err != nil {
				t.Fatal(err)
			}
			waitLocation(t, ctx, "state=needs_sign_in")
			body := textOf(t, ctx, "tbody")
			if shown := strings.Count(body, "needs_sign_in"); shown != signIn || strings.Contains(body, "credential_refused") {
				t.Errorf("filtered by needs_sign_in: %d rows with it (want %d); other states shown: %v", shown, signIn, strings.Contains(body, "credential_refused"))
			}
			screenshot(t, ctx, filepath.Join(out, fmt.Sprintf("status-%d-needs-sign-in.jpg", n)))

			// The button makes a link with the project API's token (the unit tests of package
			// admin show that the read token is refused: a browser shows its own error page then).
			auth(apiToken)
			if err := chromedp.Do(ctx, chromedp.Navigate(base+"/status?state=needs_sign_in")); err != nil {
				t.Fatal(err)
			}
			if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`tbody tr:first-child form button`))); err != nil {
				t.Fatal(err)
			}
			waitLocation(t, ctx, "/status/sign-in-link/")
			link := textOf(t, ctx, "#link")
			if links.Load() != 1 || !strings.HasPrefix(link, "https://postern.example/signin/l/client-") {
				t.Errorf("with the API token: %d links made, link %q", links.Load(), link)
			}
		})
	}
}

// waitLocation waits until the tab shows a URL that contains part, and its document is loaded.
func waitLocation(t *testing.T, ctx context.Context, part string) {
	t.Helper()
	for {
		// The location changes when the navigation commits, before the new document has loaded:
		// wait for that too, or a query may find the old document's nodes gone.
		loc, err := chromedp.Run(ctx, chromedp.Location())
		if err == nil && strings.Contains(loc, part) {
			state, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.readyState`))
			if err == nil && state == "complete" {
				if err := chromedp.Do(ctx, chromedp.WaitReady(chromedp.CSS("body"))); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for a page at %q: %v (at %s, %v)", part, ctx.Err(), loc, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// textOf is the text of the first element sel matches, read again while the document it was
// found in is being replaced (the node ids of a page that just loaded can go stale once).
func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	for try := 0; ; try++ {
		text, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err == nil {
			return text
		}
		if try == 20 || ctx.Err() != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot keeps the page, from its top, at most 12,000 pixels of it (a longer page is cut:
// Chromium draws nothing beyond its texture limit), as a JPEG at path.
func screenshot(t *testing.T, ctx context.Context, path string) {
	t.Helper()
	height, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`document.documentElement.scrollHeight`))
	if err != nil || height <= 0 {
		height = 900
	}
	q := int64(75)
	yes := true
	r, err := chromedp.Call(ctx, page.CaptureScreenshot, page.CaptureScreenshotParams{
		Format: page.CaptureScreenshotFormatJpeg, Quality: &q, CaptureBeyondViewport: &yes,
		Clip: &page.Viewport{Width: 1400, Height: min(height, 12000), Scale: 1},
	})
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(r.Data) == 0 {
		t.Fatalf("screenshot of %s is empty", path)
	}
	if err := os.WriteFile(path, r.Data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes, page %.0f px high)", path, len(r.Data), height)
}
