package project

import "strings"

// Provider defaults: the per-mailbox limits a provider documents, used for every limit a project
// leaves at zero (EffectiveLimits).
var (
	// MicrosoftLimits are Exchange Online's limits per mailbox: 30 messages a minute, 10,000
	// recipients a day, 3 concurrent connections, 500 recipients per message.
	MicrosoftLimits = Limits{MaxConnections: 3, MessagesPerMinute: 30, RecipientsPerDay: 10000, MaxRecipients: 500}
	// GoogleLimits are Gmail's: 100 recipients per message. Its daily sending limit depends on the
	// account (and is answered 550 5.4.5 when reached, which Postern defers); set
	// recipients_per_day for it.
	GoogleLimits = Limits{MaxRecipients: 100}
)

// ProviderLimits names the provider whose documented limits apply to p ("microsoft", "google")
// and returns them; "" and zero Limits when Postern knows none. The provider is the OAuth
// provider, or else the upstream's host (smtp.office365.com, smtp.gmail.com), so basic-auth
// projects get them too.
func ProviderLimits(p Project) (string, Limits) {
	provider := ""
	if p.Auth.OAuth != nil {
		provider = p.Auth.OAuth.Provider
	}
	host := strings.TrimSuffix(strings.ToLower(p.Upstream.Host), ".")
	switch {
	case provider == "microsoft", host == "smtp.office365.com", host == "smtp-legacy.office365.com":
		return "microsoft", MicrosoftLimits
	case provider == "google", host == "smtp.gmail.com":
		return "google", GoogleLimits
	}
	return "", Limits{}
}

// EffectiveLimits is p.Limits with every limit left at zero taken from ProviderLimits: what
// Postern enforces. MaxMessageBytes has no provider default.
func (p Project) EffectiveLimits() Limits {
	if p.IsRemoved() {
		return p.Limits
	}
	_, d := ProviderLimits(p)
	l := p.Limits
	if l.MaxConnections == 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.MessagesPerMinute == 0 {
		l.MessagesPerMinute = d.MessagesPerMinute
	}
	if l.RecipientsPerDay == 0 {
		l.RecipientsPerDay = d.RecipientsPerDay
	}
	if l.MaxRecipients == 0 {
		l.MaxRecipients = d.MaxRecipients
	}
	return l
}
