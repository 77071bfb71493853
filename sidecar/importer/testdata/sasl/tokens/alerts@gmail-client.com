{
  "access_token" : "",
  "expiry" : "0",
  "refresh_token" : "refresh-Alerts-0003",
  "client_id" : "999.apps.googleusercontent.com",
  "client_secret" : "google-secret-Bb2",
  "token_endpoint" : "https://oauth2.googleapis.com/token"
}
