# Inputs of the example stack. String settings end up inside double quotes in
# user_data.sh, hence the character checks.

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "vpc_id" {
  description = "VPC to run in."
  type        = string
}

variable "public_subnet_ids" {
  description = "Subnets for the load balancer (two or more zones)."
  type        = list(string)
}

variable "private_subnet_ids" {
  description = "Subnets for the instances."
  type        = list(string)
}

variable "ami_id" {
  description = "AMI for the instances; empty = the latest Amazon Linux 2023."
  type        = string
  default     = ""
}

variable "instance_type" {
  description = "Instance type."
  type        = string
  default     = "t3.small"
}

variable "min_size" {
  type    = number
  default = 2
}

variable "max_size" {
  type    = number
  default = 4
}

variable "desired_capacity" {
  type    = number
  default = 2
}

variable "app_name" {
  description = "Name shown in agentctl status and logs; prefixes the AWS resources."
  type        = string
  default     = "web"
  validation {
    condition     = can(regex("^[a-z0-9-]{1,20}$", var.app_name))
    error_message = "app_name: 1-20 of a-z, 0-9 and -."
  }
}

variable "app_repo" {
  description = "Git URL of the Node.js app."
  type        = string
  validation {
    condition     = can(regex("^[^\"$`\\\\ ]+$", var.app_repo))
    error_message = "app_repo: no spaces, quotes, $, backquotes or backslashes."
  }
}

variable "app_ref" {
  description = "Branch or tag to deploy."
  type        = string
  default     = "main"
  validation {
    condition     = can(regex("^[^\"$`\\\\ ]+$", var.app_ref))
    error_message = "app_ref: no spaces, quotes, $, backquotes or backslashes."
  }
}

variable "app_dir" {
  description = "Where the app is cloned on the instance."
  type        = string
  default     = "/srv/app"
  validation {
    condition     = can(regex("^/[^\"$`\\\\ ]*$", var.app_dir))
    error_message = "app_dir: an absolute path without spaces, quotes, $, backquotes or backslashes."
  }
}

variable "app_user" {
  description = "System user the app runs as."
  type        = string
  default     = "app"
  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]*$", var.app_user))
    error_message = "app_user: a plain user name."
  }
}

variable "app_command" {
  description = "The app's argv (no shell)."
  type        = list(string)
  default     = ["npm", "start"]
  validation {
    condition     = alltrue([for w in var.app_command : can(regex("^[^\"$`\\\\ ]+$", w))])
    error_message = "app_command: words without spaces, quotes, $, backquotes or backslashes."
  }
}

variable "app_port" {
  description = "Port the app listens on (its PORT): on loopback behind the proxy (app_port + 1 too, for reloads); else the load balancer forwards to it."
  type        = number
  default     = 3000
}

variable "health_port" {
  description = "Port of the agent's /health.html: the target group's health check hits it without the proxy; on loopback with it."
  type        = number
  default     = 8081
}

variable "proxy_port" {
  description = "Port of the agent's traffic front (proxy mode): the target group forwards to it and checks /health.html on it; 0 = no proxy."
  type        = number
  default     = 80
  validation {
    condition     = var.proxy_port >= 0 && var.proxy_port <= 65535 && floor(var.proxy_port) == var.proxy_port
    error_message = "proxy_port: a port number, or 0 for no proxy."
  }
}

variable "node_major" {
  description = "Node.js major version on Amazon Linux 2023 (package nodejsNN)."
  type        = number
  default     = 20
}

variable "max_rss" {
  description = "memory.max_rss of the agent: restart the app above this (\"700MB\"); \"0\" = off."
  type        = string
  default     = "0"
  validation {
    condition     = can(regex("^[0-9]+[A-Za-z]*$", var.max_rss))
    error_message = "max_rss: a size such as 700MB, or 0."
  }
}

variable "agent_pkg_url" {
  description = "URL of the agent .deb or .rpm (the .rpm on Amazon Linux); empty = use agent_bin_url."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[^\"$`\\\\ ]*$", var.agent_pkg_url))
    error_message = "agent_pkg_url: no spaces, quotes, $, backquotes or backslashes."
  }
}

variable "agent_bin_url" {
  description = "URL of the static agent binary, used when agent_pkg_url is empty."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^[^\"$`\\\\ ]*$", var.agent_bin_url))
    error_message = "agent_bin_url: no spaces, quotes, $, backquotes or backslashes."
  }
}

variable "agent_sha256" {
  description = "sha256 of the agent download; empty = not checked."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.agent_sha256))
    error_message = "agent_sha256: 64 hex digits, or empty."
  }
}

variable "stop_drain_seconds" {
  description = "The agent's stop.drain: on shutdown its health page says 503 this long before the app stops. The target group's deregistration_delay is this plus 10 s."
  type        = number
  default     = 20
  validation {
    condition     = var.stop_drain_seconds >= 0 && var.stop_drain_seconds <= 3590 && floor(var.stop_drain_seconds) == var.stop_drain_seconds
    error_message = "stop_drain_seconds: whole seconds, 0 to 3590 (deregistration_delay is at most 3600)."
  }
}

variable "refresh_min_healthy_percentage" {
  description = "Instance refresh: the share of the group that stays in service while instances are replaced."
  type        = number
  default     = 90
  validation {
    condition     = var.refresh_min_healthy_percentage >= 0 && var.refresh_min_healthy_percentage <= 100
    error_message = "refresh_min_healthy_percentage: 0 to 100."
  }
}

variable "refresh_checkpoints" {
  description = "Instance refresh: percentages of the group to pause at (e.g. [50]); empty = no checkpoints, the refresh runs to the end."
  type        = list(number)
  default     = []
  validation {
    condition     = alltrue([for p in var.refresh_checkpoints : p > 0 && p < 100])
    error_message = "refresh_checkpoints: percentages between 0 and 100 (100 is added)."
  }
}

variable "refresh_checkpoint_delay" {
  description = "Instance refresh: seconds to wait at each checkpoint."
  type        = number
  default     = 600
}
