// Package cloudwatch holds the CloudWatch agent's configuration for a host
// running the agent: amazon-cloudwatch-agent.json tails the agent's log file
// and scrapes its /metrics through prometheus.yaml. The package has no code;
// its test checks the files against what the agent writes and serves.
package cloudwatch
