package sidecar

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/postern/postern/sidecar/config"
	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/milter"
	"github.com/postern/postern/sidecar/signin"
	"github.com/postern/postern/sidecar/smtpd"
	"github.com/postern/postern/sidecar/token"
	"github.com/postern/postern/sidecar/upstream"
)

// TestDefaultsInOnePlace: a configuration file that leaves a key out gives each part the value
// the part uses when its option is zero, so that the defaults are one set, whether Postern runs
// from a file or a part is used on its own (check, send-test, the tests).
func TestDefaultsInOnePlace(t *testing.T) {
	t.Parallel()
	c := config.Default()
	up := UpstreamOptions(c, slog.New(slog.DiscardHandler))
	tests := []struct {
		key       string
		got, want any
	}{
		{"upstream.dial_timeout", up.DialTimeout, upstream.DefaultDialTimeout},
		{"upstream.greeting_timeout", up.GreetingTimeout, upstream.DefaultGreetingTimeout},
		{"upstream.command_timeout", up.CommandTimeout, upstream.DefaultCommandTimeout},
		{"upstream.data_timeout", up.DataTimeout, upstream.DefaultDataTimeout},
		{"upstream.idle_timeout", up.IdleTimeout, upstream.DefaultIdleTimeout},
		{"upstream.max_conn_wait", up.MaxConnWait, upstream.DefaultMaxConnWait},
		{"upstream.down_backoff", up.DownBackoff, upstream.DefaultDownBackoff},
		{"limits.max_message_bytes", c.Limits.MaxMessageBytes, int64(smtpd.DefaultMaxMessageBytes)},
		{"limits.max_recipients", c.Limits.MaxRecipients, smtpd.DefaultMaxRecipients},
		{"limits.rate_wait", c.Limits.RateWait, smtpd.DefaultRateWait},
		{"smtpd.command_timeout", c.SMTPD.CommandTimeout, smtpd.DefaultReadTimeout},
		{"smtpd.data_timeout", c.SMTPD.DataTimeout, smtpd.DefaultDataTimeout},
		{"milter.idle_timeout", c.Milter.IdleTimeout, milter.DefaultIdleTimeout},
		{"milter.packet_timeout", c.Milter.PacketTimeout, milter.DefaultPacketTimeout},
		{"milter.max_header_bytes", c.Milter.MaxHeaderBytes, milter.DefaultMaxHeaderBytes},
		{"reload_interval", c.ReloadInterval, directory.DefaultInterval},
		{"postfix.queue_lifetime + postfix.backoff_time", c.Postfix.RemovedHold(), directory.DefaultRemovedHold},
		{"tokens.refresh_margin", c.Tokens.RefreshMargin, token.DefaultMargin},
		{"signin.link_ttl (the most)", config.MaxSignInLinkTTL, signin.MaxLinkTTL},
	}
	for _, tc := range tests {
		if fmt.Sprint(tc.got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: the configuration's default is %v, the part's %v", tc.key, tc.got, tc.want)
		}
	}
}
