"""The operator's view: functions from status data to rich renderables."""
